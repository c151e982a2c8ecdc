"""API keys with scopes and a rate limit per key (gateway/auth.py, gateway/deps.py), and the production
profile's admin port (gateway/app.py), without servers: the apps are driven in-process (no lifespan).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import Depends, FastAPI
from pydantic import ValidationError

from actors.contract import MeshConfig
from actors.settings import Settings, parse_api_keys
from gateway.app import create_admin_app, create_app
from gateway.auth import ApiKeys, TokenBucket
from gateway.deps import ADMIN, WRITE, require_api_key
from gateway.errors import install_error_handlers

# routes anyone may call (probes, the page); the production profile moves the admin ones off the public port
OPEN = {"/health", "/ready", "/status", "/metrics"}
OPEN_OPERATIONS = {("DELETE", "/session")}  # ending a browser session (clearing its cookie) needs no key
WRITE_ROUTES = {("POST", "/images/upload"), ("POST", "/encode"), ("DELETE", "/images/{image_id}")}
ADMIN_ROUTES = {("POST", "/models/switch")}


# --- parsing ------------------------------------------------------------------------------------------------
def test_scopes_parse_and_imply_the_lesser_ones() -> None:
    keys = parse_api_keys(" bare , r:read, w:write, rw:read+write, a:admin ,")
    assert keys == {
        "bare": frozenset({"read", "write", "admin"}),  # the format before scopes: every scope
        "r": frozenset({"read"}),
        "w": frozenset({"read", "write"}),
        "rw": frozenset({"read", "write"}),
        "a": frozenset({"read", "write", "admin"}),
    }
    assert parse_api_keys("") == {}


@pytest.mark.parametrize("text", ["k:root", "k:", ":read", "k:read+sudo", "k,k:read"])
def test_bad_api_keys_are_refused_at_start_without_quoting_the_key(text: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(api_keys=text)
    assert "MESH_API_KEYS" in str(refused.value)
    assert "k:" not in str(refused.value) and "input_value" not in str(refused.value)


# --- the token bucket ---------------------------------------------------------------------------------------
def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3, tokens=3.0, stamp=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # empty: one token every 0.5 s
    assert bucket.take(0.5) == 0.0
    assert bucket.take(10.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # refilled to the burst only


def test_each_key_has_its_own_bucket_and_unknown_keys_none() -> None:
    now = [0.0]
    keys = ApiKeys({"a": frozenset({"read"}), "b": frozenset({"read"})}, 1.0, 2, clock=lambda: now[0])
    assert [keys.retry_after_s("a") for _ in range(3)] == [0, 0, 1]
    assert keys.retry_after_s("b") == 0  # another key is not slowed down
    now[0] = 1.0
    assert keys.retry_after_s("a") == 0
    assert keys.identify("a") == "a" and keys.identify("c") is None and keys.identify("") is None
    assert keys.identify("a,b") is None
    assert ApiKeys({"a": frozenset({"read"})}, 0.0, 1).retry_after_s("a") == 0  # rate 0: no limit


# --- the dependencies ---------------------------------------------------------------------------------------
def keyed_app(api_keys: str, rate_per_s: float = 100.0, burst: int = 100) -> FastAPI:
    """Three routes guarded like the gateway's: read (the router default), write, admin."""
    app = FastAPI()
    install_error_handlers(app)
    app.state.api_keys = ApiKeys.from_settings(
        Settings(api_keys=api_keys, api_rate_per_s=rate_per_s, api_rate_burst=burst)
    )

    @app.get("/r", dependencies=[Depends(require_api_key)])
    async def read() -> dict[str, str]:
        return {"ok": "read"}

    @app.post("/w", dependencies=[Depends(require_api_key), WRITE])
    async def write() -> dict[str, str]:
        return {"ok": "write"}

    @app.post("/a", dependencies=[Depends(require_api_key), ADMIN])
    async def admin() -> dict[str, str]:
        return {"ok": "admin"}

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = keyed_app("r1:read,w1:write,a1:admin,old")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def test_scopes_401_then_403(client: httpx.AsyncClient) -> None:
    expect: dict[tuple[str, str], int] = {
        ("r1", "/r"): 200,
        ("r1", "/w"): 403,
        ("r1", "/a"): 403,
        ("w1", "/r"): 200,
        ("w1", "/w"): 200,
        ("w1", "/a"): 403,
        ("a1", "/a"): 200,
        ("old", "/a"): 200,  # a bare key keeps every scope
        ("nope", "/r"): 401,
        ("nope", "/w"): 401,
    }
    for (key, path), status in expect.items():
        method = "GET" if path == "/r" else "POST"
        r = await client.request(method, path, headers={"X-API-Key": key})
        assert r.status_code == status, (key, path, r.text)
        if status == 403:
            assert r.json()["error"]["code"] == "forbidden"
    assert (await client.post("/w", headers={"Authorization": "Bearer w1"})).status_code == 200
    assert (await client.get("/r")).status_code == 401


async def test_over_the_rate_is_429_with_retry_after_and_one_token_per_request() -> None:
    app = keyed_app("w1:write,other", rate_per_s=0.5, burst=2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        # a write route runs two key checks (read, then write) but spends one token
        statuses = [(await c.post("/w", headers={"X-API-Key": "w1"})).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        refused = await c.get("/r", headers={"X-API-Key": "w1"})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 2
        assert (await c.get("/r", headers={"X-API-Key": "other"})).status_code == 200
        assert (await c.get("/r", headers={"X-API-Key": "invented"})).status_code == 401  # not 429


async def test_keys_off_lets_everything_through() -> None:
    app = keyed_app("")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.post("/a")).status_code == 200


# --- the gateway's own routes -------------------------------------------------------------------------------
class StubConfig:
    async def get(self) -> MeshConfig:
        return MeshConfig()


class StubServices:
    config = StubConfig()


async def test_every_gateway_route_but_the_open_ones_needs_a_key_with_its_scope() -> None:
    """Each route of the OpenAPI document, called without a key, with a read, a write and an admin key. No
    lifespan runs, so a request the key checks let through ends in 500 (no services) or 400 (no body)."""
    app = create_app(Settings(api_keys="r:read,w:write,a:admin"))
    app.state.services = StubServices()  # what the upload guard reads before any route; nothing else
    paths = app.openapi()["paths"]
    calls = [
        (m.upper(), path) for path, item in paths.items() for m in item if m in ("get", "post", "delete")
    ]
    assert len(calls) > 12
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a route past the checks: 500
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for method, path in calls:
            url = path.replace("{image_id}", "0" * 32)
            status = {}
            for key in ("", "r", "w", "a"):
                r = await c.request(method, url, headers={"X-API-Key": key} if key else {})
                status[key] = r.status_code
                c.cookies.clear()  # POST /session sets one: the next request must show its own key, or none
            if path in OPEN or (method, path) in OPEN_OPERATIONS:
                assert set(status.values()) == {status[""]} and status[""] not in (401, 403), (path, status)
                continue
            need = "a" if (method, path) in ADMIN_ROUTES else "w" if (method, path) in WRITE_ROUTES else "r"
            expected = {"": 401, "r": 403, "w": 403, "a": None}
            expected |= {"r": None, "w": None} if need == "r" else {"w": None} if need == "w" else {}
            for key, want in expected.items():
                got = status[key]
                assert got == want if want else got not in (401, 403, 429), (method, path, key, status)
            documented = paths[path][method.lower()]["responses"]
            assert {"401", "403", "429"} <= set(documented), (method, path)


# --- the production profile's admin port --------------------------------------------------------------------
def production_settings() -> Settings:
    secrets = {
        name: f"prod-{name}"
        for name in Settings.model_fields
        if any(w in name for w in ("password", "access_key", "secret_key"))
    }
    return Settings.model_validate({"profile": "production", "api_keys": "k1", **secrets})


async def test_production_moves_status_metrics_and_docs_to_the_admin_port() -> None:
    s = production_settings()
    assert s.admin_port_split and not Settings().admin_port_split
    public = create_app(s)
    admin = create_admin_app(public)
    transport = httpx.ASGITransport
    async with (
        httpx.AsyncClient(transport=transport(app=public), base_url="http://public") as pub,
        httpx.AsyncClient(transport=transport(app=admin), base_url="http://admin") as adm,
    ):
        for path in ("/metrics", "/status", "/docs", "/openapi.json", "/redoc"):
            assert (await pub.get(path)).status_code == 404, path
        assert (await pub.get("/health")).status_code == 200
        metrics = await adm.get("/metrics")
        assert metrics.status_code == 200 and "mesh_http_request_seconds" in metrics.text
        spec = (await adm.get("/openapi.json")).json()
        assert "/images/upload" in spec["paths"] and "/metrics" not in spec["paths"]  # the public API's
        assert "swagger" in (await adm.get("/docs")).text.lower()
        assert (await adm.get("/status")).status_code == 503  # the public app's lifespan has not run here
    local = create_app(Settings())
    async with httpx.AsyncClient(transport=transport(app=local), base_url="http://local") as loc:
        assert (await loc.get("/metrics")).status_code == 200
        assert (await loc.get("/openapi.json")).status_code == 200
