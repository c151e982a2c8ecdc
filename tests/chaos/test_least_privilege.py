"""Least privilege (issue 5, item 9): NATS users per service, Redis ACL users, gateway API keys, production.

Each test asserts what an attacker holding one service's credentials (or none) would see: a permissions
violation and no effect, a refused connection, a 401 with the error body. Runs against the chaos stack
(nats.conf and the Redis command line are the ones ``make run`` uses); the production-settings test needs no
servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import redis
from nats.aio.client import Client
from pydantic import ValidationError

from actors import contract
from actors.settings import Settings
from ops.stack.services import ROOT
from ops.stack.supervisor import settings_env
from tests.conftest import free_port
from tests.corpus import jpeg

SERVICE_USERS = ("gateway", "coordinator", "config", "indexer")
REFUSED = "Authorization Violation"


# --- NATS -------------------------------------------------------------------------------------------------
class Violations:
    """The asynchronous errors a NATS connection receives (permission violations arrive this way)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def record(self, e: Exception) -> None:  # nats-py wants a coroutine function as error_cb
        self.errors.append(str(e))

    async def wait_for(self, fragment: str, timeout_s: float = 5) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(fragment in e.lower() for e in self.errors):
            assert time.monotonic() < deadline, f"no violation {fragment!r}; errors: {self.errors}"
            await asyncio.sleep(0.05)


async def connect_as(s: Settings, user: str, password: str | None = None, **kw: Any) -> Client:
    """One connection, no reconnects (a refusal must surface, not be retried forever)."""
    return await nats.connect(
        s.nats_server_url,
        user=user,
        password=s.nats_password(user) if password is None else password,
        name=f"test-least-privilege-{user}",
        allow_reconnect=False,
        max_reconnect_attempts=0,
        connect_timeout=3,
        **kw,
    )


async def assert_publish_denied(s: Settings, ops_nc: Client, user: str, subject: str) -> None:
    """``user`` publishing to ``subject``: a permissions violation, and no subscriber receives anything."""
    watch = await ops_nc.subscribe(subject)
    await ops_nc.flush()
    violations = Violations()
    nc = await connect_as(s, user, error_cb=violations.record)
    try:
        await nc.publish(subject, b'{"forged": true}')
        await nc.flush()
        await violations.wait_for(f'permissions violation for publish to "{subject.lower()}"')
        assert nc.is_connected, "a violation should not cost the connection"
    finally:
        await nc.close()
    with pytest.raises(nats.errors.TimeoutError):
        await watch.next_msg(timeout=1)
    await watch.unsubscribe()


def test_nats_conf_has_one_user_per_service_and_no_anonymous_user() -> None:
    text = "\n".join(line.split("#", 1)[0] for line in (ROOT / "nats.conf").read_text().splitlines())
    blocks = re.split(r"\{\s*\n?\s*user:", text)[1:]
    users = {b.split(",", 1)[0].strip(): b for b in blocks}
    assert set(users) == {*SERVICE_USERS, "ops"}, sorted(users)
    for user in SERVICE_USERS:
        block = users[user].split("user:", 1)[0]
        assert "permissions" in block and "publish" in block, f"{user} has no publish permissions"
        assert not re.search(r'allow:\s*\[\s*">"', block), f"{user} may publish anywhere"
        assert f"$MESH_NATS_PASSWORD_{user.upper()}" in block, (
            f"{user}'s password is not from the environment"
        )
    assert "no_auth_user" not in text and "authorization" not in text


async def test_every_service_connects_as_its_own_nats_user(chaos_settings: Settings) -> None:
    url = f"http://{chaos_settings.host}:{chaos_settings.nats_monitor_port}/connz"
    async with httpx.AsyncClient(timeout=10) as c:
        conns = (await c.get(url, params={"auth": "true", "limit": 1024})).json()["connections"]
    seen = {(conn.get("name"), conn.get("authorized_user")) for conn in conns}
    print(f"\nNATS connections (name, user): {sorted(seen, key=str)}")
    for user in SERVICE_USERS:
        users_of_service = {u for name, u in seen if name == user}
        assert users_of_service == {user}, f"service {user} connects as {users_of_service}"


async def test_gateway_user_cannot_publish_to_the_indexer_nor_delete_the_stream(
    chaos_settings: Settings, ops_nc: Client
) -> None:
    s = chaos_settings
    await assert_publish_denied(s, ops_nc, "gateway", contract.INDEX_UPSERT)
    await assert_publish_denied(s, ops_nc, "gateway", contract.CONFIG_SET)  # nor raise the upload limits

    violations = Violations()
    nc = await connect_as(s, "gateway", error_cb=violations.record)
    try:
        # a denied API request is never answered: the client times out, the server reports the violation
        with pytest.raises(nats.errors.TimeoutError):
            await nc.jetstream(timeout=2).delete_stream(s.stream)
        await violations.wait_for(f'"$js.api.stream.delete.{s.stream.lower()}"')
        with pytest.raises(nats.errors.TimeoutError):
            await nc.jetstream(timeout=2).purge_stream(s.stream)
        await violations.wait_for(f'"$js.api.stream.purge.{s.stream.lower()}"')
        # nor read the indexer's or the coordinator's traffic
        await nc.subscribe("index.>")
        await nc.flush()
        await violations.wait_for('permissions violation for subscription to "index.>"')
    finally:
        await nc.close()
    info = await ops_nc.jetstream().stream_info(s.stream)
    assert info.config.name == s.stream
    print(
        f"\n{s.stream} still there: {info.state.messages} messages; gateway violations: {violations.errors}"
    )


async def test_indexer_user_cannot_publish_jobs(chaos_settings: Settings, ops_nc: Client) -> None:
    await assert_publish_denied(chaos_settings, ops_nc, "indexer", contract.JOBS_SUBJECT)


async def test_anonymous_unknown_and_wrong_password_connections_are_refused(chaos_settings: Settings) -> None:
    s = chaos_settings
    attempts: dict[str, dict[str, Any]] = {
        "anonymous": {},
        "wrong password": {"user": "gateway", "password": "not-" + s.nats_password("gateway")},
        "another service's password": {"user": "gateway", "password": s.nats_password("indexer")},
        "unknown user": {"user": "mallory", "password": "x"},
    }
    for what, credentials in attempts.items():
        with pytest.raises(nats.errors.Error) as refused:
            nc = await nats.connect(
                s.nats_server_url,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=3,
                **credentials,
            )
            await nc.close()
        assert REFUSED in str(refused.value), (what, refused.value)


# --- Redis ------------------------------------------------------------------------------------------------
def raw_redis(s: Settings, command: bytes) -> bytes:
    """One RESP2 command on a fresh, unauthenticated socket: exactly what a stranger on the host gets."""
    with socket.create_connection((s.host, s.redis_port), timeout=5) as sock:
        sock.sendall(command)
        return sock.recv(4096)


def test_redis_default_user_is_off_and_strangers_get_noauth(chaos_settings: Settings) -> None:
    s = chaos_settings
    with redis.Redis.from_url(s.redis_server_url) as r:
        acl = [str(line) for line in r.acl_list()]
        bind = r.config_get("bind")["bind"]
    print(f"\nRedis ACL LIST: {acl}; bind={bind}")
    on_without_password = [line for line in acl if " on " in f"{line} " and "nopass" in line]
    assert not on_without_password, on_without_password
    # The default user is off, or on behind a password nobody is told (ops/stack/services.py: Redis replays
    # the AOF as the default user); never `nopass`.
    default = next(line for line in acl if line.startswith("user default "))
    assert " off" in default or re.search(r" #[0-9a-f]{64}", default), default
    assert set(bind.split()) <= {"127.0.0.1", "-::1", "::1"}, bind

    for command in (b"PING\r\n", b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n", b"*1\r\n$8\r\nFLUSHALL\r\n"):
        assert raw_redis(s, command).startswith(b"-NOAUTH"), command
    for user, password in (("default", ""), (s.redis_user, "wrong"), ("mallory", s.redis_password)):
        with (
            pytest.raises(redis.AuthenticationError),
            redis.Redis(host=s.host, port=s.redis_port, username=user, password=password, protocol=2) as r,
        ):
            r.ping()


# --- API keys on a second gateway -------------------------------------------------------------------------
@contextlib.contextmanager
def private_gateway(settings: Settings, log_path: Path, **overrides: str) -> Iterator[tuple[str, int]]:
    """A second ``python -m gateway`` on the chaos stack, on its own free port, with ``MESH_*`` overrides;
    yields its base URL and pid, and stops it on the way out."""
    port = free_port()
    env = {**os.environ, **settings_env(settings), "MESH_GATEWAY_PORT": str(port), **overrides}
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://{settings.host}:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"second gateway exited: {log_path.read_text()}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "second gateway did not come up"
            time.sleep(0.3)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture
def keyed_gateway(chaos_settings: Settings, tmp_path: Path) -> Iterator[str]:
    """A second gateway on the chaos stack with ``MESH_API_KEYS=k1,k2``; its base URL."""
    with private_gateway(chaos_settings, tmp_path / "gateway-with-keys.log", MESH_API_KEYS="k1,k2") as (
        url,
        _,
    ):
        yield url


async def test_api_keys_guard_every_image_route_and_health_stays_open(keyed_gateway: str) -> None:
    image = jpeg(9301, (48, 48))

    def requests(image_id: str) -> list[tuple[str, str, dict[str, Any]]]:
        upload = {"files": {"file": ("k.jpg", image, "image/jpeg")}}
        return [
            ("POST", "/images/upload", upload),
            ("POST", "/images/upload", {}),  # no file either: still 401, not 400 (no oracle without a key)
            ("GET", f"/images/{image_id}", {}),
            ("GET", f"/images/{image_id}/similar", {}),
            ("GET", f"/images/{image_id}/content", {}),
            ("GET", f"/images/{image_id}/duplicates", {}),
            ("DELETE", f"/images/{image_id}", {}),
            ("POST", "/encode", upload),
            ("POST", "/search/image", upload),
            ("GET", "/search", {"params": {"q": "a cat"}}),
            ("GET", "/duplicates", {}),
        ]

    async with httpx.AsyncClient(base_url=keyed_gateway, timeout=60) as c:
        refused = 0
        for headers in (
            {},
            {"X-API-Key": "k3"},
            {"X-API-Key": ""},
            {"Authorization": "Bearer nope"},
            {"X-API-Key": "k1,k2"},
        ):
            for method, path, kw in requests("0" * 32):
                r = await c.request(method, path, headers=headers, **kw)
                assert r.status_code == 401, (method, path, headers, r.status_code, r.text[:200])
                assert r.json()["error"]["code"] == "unauthorized" and r.json()["error"]["message"]
                refused += 1
        assert (await c.get("/health")).status_code == 200

        key = {"X-API-Key": "k2"}
        up = await c.post("/images/upload", files={"file": ("k.jpg", image, "image/jpeg")}, headers=key)
        assert up.status_code in (200, 202), up.text
        image_id = up.json()["image_id"]
        deadline = time.monotonic() + 180
        while (rec := (await c.get(f"/images/{image_id}", headers=key)).json())["status"] not in (
            "done",
            "error",
        ):
            assert time.monotonic() < deadline, rec
            await asyncio.sleep(0.5)
        assert rec["status"] == "done", rec
        similar = await c.get(f"/images/{image_id}/similar", headers=key)
        assert similar.status_code == 200, similar.text
        encoded = await c.post("/encode", files={"file": ("k.jpg", image, "image/jpeg")}, headers=key)
        assert encoded.status_code == 200 and encoded.json()["embedding_dim"] > 0, encoded.text[:200]
        bearer = await c.get(f"/images/{image_id}", headers={"Authorization": "Bearer k1"})
        assert bearer.status_code == 200
    print(f"\nAPI keys: {refused} requests refused with 401; k2 and Bearer k1 accepted; /health open")


# --- production profile (no servers) ------------------------------------------------------------------------
LOCAL_SECRETS = (
    "MESH_NATS_PASSWORD_GATEWAY",
    "MESH_NATS_PASSWORD_COORDINATOR",
    "MESH_NATS_PASSWORD_CONFIG",
    "MESH_NATS_PASSWORD_INDEXER",
    "MESH_NATS_PASSWORD_OPS",
    "MESH_REDIS_PASSWORD",
    "MESH_REDIS_PASSWORD_GATEWAY",
    "MESH_REDIS_PASSWORD_COORDINATOR",
    "MESH_REDIS_PASSWORD_INDEXER",
    "MESH_S3_ACCESS_KEY_GATEWAY",
    "MESH_S3_SECRET_KEY_GATEWAY",
    "MESH_S3_ACCESS_KEY_COORDINATOR",
    "MESH_S3_SECRET_KEY_COORDINATOR",
    "MESH_S3_ACCESS_KEY",
    "MESH_S3_SECRET_KEY",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("MESH_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_production_profile_refuses_local_default_credentials(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MESH_PROFILE", "production")
    with pytest.raises(ValidationError) as refused:
        Settings()
    message = str(refused.value)
    missing = [name for name in (*LOCAL_SECRETS, "MESH_API_KEYS") if name not in message]
    assert not missing, f"not named: {missing}\n{message}"
    assert "MESH_PROFILE=production" in message

    for name in LOCAL_SECRETS:
        clean_env.setenv(name, f"prod-{name.lower()}-0123456789")
    clean_env.setenv("MESH_S3_SECRET_KEY", "local-mesh-secret")  # one left behind: named alone
    clean_env.setenv("MESH_API_KEYS", "prod-key")
    with pytest.raises(ValidationError) as one_left:
        Settings()
    assert "MESH_S3_SECRET_KEY" in str(one_left.value)
    assert not [n for n in (*LOCAL_SECRETS[:-1], "MESH_API_KEYS") if n in str(one_left.value)]

    clean_env.setenv("MESH_S3_SECRET_KEY", "prod-secret-0123456789")
    assert Settings().profile == "production"
