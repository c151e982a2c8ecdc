"""Browser sessions without servers: the signed, expiring token (gateway/session_tokens.py), and the cookie in
``require_api_key`` and ``POST``/``DELETE /session`` (gateway/deps.py, gateway/session.py), driven in-process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import Depends, FastAPI

from actors.settings import Settings
from gateway import session
from gateway.auth import ApiKeys
from gateway.deps import WRITE, require_api_key
from gateway.errors import install_error_handlers
from gateway.session_tokens import COOKIE, SESSION_TTL_S, SessionTokens, derive_secret


# --- the token ----------------------------------------------------------------------------------------------
class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_token_names_its_key_until_it_expires() -> None:
    clock = Clock()
    tokens = SessionTokens(["k1", "k2"], clock=clock)
    t1, t2 = tokens.issue("k1"), tokens.issue("k2")
    assert tokens.verify(t1) == "k1" and tokens.verify(t2) == "k2"
    assert "k1" not in t1 and t1.count(".") == 3 and t1.startswith("v1.")
    assert len(t1) < 100 and all(c.isalnum() or c in "._-" for c in t1)  # cookie- and URL-safe
    clock.now += SESSION_TTL_S - 1
    assert tokens.verify(t1) == "k1"
    clock.now += 1
    assert tokens.verify(t1) is None  # expired
    with pytest.raises(ValueError):
        tokens.issue("k3")


def test_every_gateway_with_the_same_keys_accepts_the_token_and_other_keys_do_not() -> None:
    clock = Clock()
    token = SessionTokens(["k1", "k2"], clock=clock).issue("k1")
    assert SessionTokens(["k2", "k1"], clock=clock).verify(token) == "k1"  # order does not matter
    assert SessionTokens(["k1", "k2", "k3"], clock=clock).verify(token) is None  # keys changed: secret too
    assert SessionTokens(["k1"], secret=derive_secret(["k1", "k2"]), clock=clock).verify(token) == "k1"
    assert SessionTokens(["k2"], secret=derive_secret(["k1", "k2"]), clock=clock).verify(token) is None


def test_a_tampered_or_malformed_token_is_refused() -> None:
    clock = Clock()
    tokens = SessionTokens(["k1", "k2"], clock=clock)
    token = tokens.issue("k1")
    version, kid, expires, mac = token.split(".")
    other_kid = tokens.key_id("k2")
    forged = [
        f"{version}.{other_kid}.{expires}.{mac}",  # another key's identity
        f"{version}.{kid}.{int(expires) + 3600}.{mac}",  # a later expiry
        f"{version}.{kid}.{expires}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",  # one character of the MAC
        f"v2.{kid}.{expires}.{mac}",
        f"{version}.{kid}.{expires}",
        f"{token}.x",
        f"{version}.{kid}.-1.{mac}",
        f"{version}.{kid}.１２.{mac}",  # non-ASCII digits
        token + "A" * 200,
        "",
        "....",
        "v1.x.1.y",
    ]
    for bad in forged:
        assert tokens.verify(bad) is None, bad
    assert tokens.verify(None) is None
    # a token signed with the right secret but expiring further ahead than a session lasts: not ours
    far = SessionTokens(["k1", "k2"], clock=Clock(clock.now + 10 * SESSION_TTL_S)).issue("k1")
    assert tokens.verify(far) is None


# --- the cookie on the routes -------------------------------------------------------------------------------
def keyed_app(api_keys: str, rate_per_s: float = 100.0, burst: int = 100) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.state.api_keys = ApiKeys.from_settings(
        Settings(api_keys=api_keys, api_rate_per_s=rate_per_s, api_rate_burst=burst)
    )
    app.include_router(session.router)

    @app.get("/r", dependencies=[Depends(require_api_key)])
    async def read() -> dict[str, str]:
        return {"ok": "read"}

    @app.post("/w", dependencies=[Depends(require_api_key), WRITE])
    async def write() -> dict[str, str]:
        return {"ok": "write"}

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = keyed_app("r1:read,w1:write")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def login(c: httpx.AsyncClient, key: str) -> str:
    r = await c.post("/session", headers={"X-API-Key": key})
    assert r.status_code == 204, r.text
    return r.cookies[COOKIE]


async def test_post_session_sets_a_strict_http_only_cookie_that_stands_for_the_key(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/session", headers={"X-API-Key": "r1"})
    assert r.status_code == 204 and r.headers["Cache-Control"] == "no-store"
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=v1.") and "Secure" not in cookie  # plain HTTP here
    assert cookie.endswith(f"; Max-Age={SESSION_TTL_S}; Path=/; HttpOnly; SameSite=Strict")
    assert (await client.get("/r")).status_code == 200  # the cookie alone
    assert (await client.post("/w", headers={"X-Requested-With": "t"})).status_code == 403  # r1: read only
    r = await client.delete("/session")
    assert r.status_code == 204 and r.headers["Set-Cookie"].startswith(f"{COOKIE}=; Max-Age=0; Path=/")
    assert (await client.get("/r")).status_code == 401


async def test_the_key_may_come_in_the_body_or_as_bearer_and_bad_ones_get_no_cookie(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/session", json={"api_key": "w1"})).cookies.get(COOKIE)
    assert (await client.post("/session", headers={"Authorization": "Bearer w1"})).cookies.get(COOKIE)
    client.cookies.clear()
    refused = [
        await client.post("/session"),
        await client.post("/session", json={"api_key": "nope"}),
        await client.post("/session", headers={"X-API-Key": "nope"}),
    ]
    for r in refused:
        assert r.status_code == 401 and "set-cookie" not in r.headers, r.request
        assert r.json()["error"]["code"] == "unauthorized"
    # a header wins over the body, a bad header included
    r = await client.post("/session", json={"api_key": "w1"}, headers={"X-API-Key": "nope"})
    assert r.status_code == 401
    assert (await client.post("/session", json={"api_key": 3})).status_code == 400  # malformed body
    # what a form on another site can send (enctype text/plain, no preflight) is not JSON: no login CSRF
    plain = await client.post(
        "/session", content=b'{"api_key": "w1"}', headers={"Content-Type": "text/plain"}
    )
    assert plain.status_code == 400 and "set-cookie" not in plain.headers


async def test_the_header_wins_over_the_cookie_and_a_tampered_cookie_is_401(
    client: httpx.AsyncClient,
) -> None:
    token = await login(client, "w1")
    assert (await client.get("/r", headers={"X-API-Key": "nope"})).status_code == 401  # no fallback
    assert (await client.get("/r", headers={"X-API-Key": "r1"})).status_code == 200
    client.cookies.clear()
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert (await client.get("/r", headers={"Cookie": f"{COOKIE}={tampered}"})).status_code == 401
    assert (await client.get("/r", headers={"Cookie": f"{COOKIE}={token}"})).status_code == 200


async def test_unsafe_methods_with_the_cookie_alone_need_x_requested_with(client: httpx.AsyncClient) -> None:
    await login(client, "w1")
    refused = await client.post("/w")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf"
    assert (await client.post("/w", headers={"X-Requested-With": "fetch"})).status_code == 200
    assert (await client.post("/w", headers={"X-API-Key": "w1"})).status_code == 200  # a header: no CSRF
    # the cookie never mints another cookie: POST /session needs the key itself
    assert (await client.post("/session", headers={"X-Requested-With": "fetch"})).status_code == 401


async def test_the_cookie_spends_its_keys_tokens() -> None:
    app = keyed_app("r1:read", rate_per_s=0.5, burst=2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        await login(c, "r1")  # one token
        assert (await c.get("/r")).status_code == 200  # the second
        limited = await c.get("/r")
        assert limited.status_code == 429 and limited.headers["Retry-After"]
        assert (await c.get("/r", headers={"X-API-Key": "r1"})).status_code == 429  # the same bucket


async def test_keys_off_post_session_sets_nothing_and_cookies_are_ignored() -> None:
    app = keyed_app("")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/session")
        assert r.status_code == 204 and "set-cookie" not in r.headers
        assert (await c.post("/w", headers={"Cookie": f"{COOKIE}=junk"})).status_code == 200


async def test_the_cookie_is_secure_over_https() -> None:
    app = keyed_app("r1:read")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://t") as c:
        r = await c.post("/session", headers={"X-API-Key": "r1"})
        assert r.headers["Set-Cookie"].endswith("; SameSite=Strict; Secure")
