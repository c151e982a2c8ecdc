"""`make up` / `make ps` / `make down` on a private stack: probes, supervision, no orphans, persistence.

Drives the same command line as the Makefile (`python -m ops.stack ...`) with MESH_* settings on free ports.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from actors.runtime import connect_nats
from actors.settings import Settings
from ops.stack.services import ALL
from ops.stack.supervisor import Stack, _alive, settings_env
from tests.conftest import s3_client, test_settings

ROOT = Path(__file__).resolve().parents[2]


def stack_cli(settings: Settings, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.run(
        [sys.executable, "-m", "ops.stack", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def probe_every_server(s: Settings) -> None:
    h = s.host
    assert httpx.get(f"http://{h}:{s.nats_monitor_port}/healthz?js-enabled-only=true").status_code == 200
    with redis.Redis.from_url(s.redis_server_url) as r:
        assert r.ping()
        assert "search" in {m[b"name"].decode().lower() for m in r.execute_command("MODULE LIST")}
    assert s.s3_bucket in [b["Name"] for b in s3_client(s).list_buckets()["Buckets"]]
    assert httpx.get(f"http://{h}:{s.triton_http_port}/v2/health/ready").status_code == 200
    assert httpx.get(f"http://{h}:{s.gateway_port}/health").status_code == 200
    for port in (s.coordinator_http_port, s.config_http_port, s.indexer_http_port):
        assert httpx.get(f"http://{h}:{port}/health").status_code == 200


async def write_one_of_each(s: Settings) -> None:
    nc = await connect_nats(s, "ops")
    try:
        await nc.jetstream().publish(
            "images.jobs.process", b'{"persist":"me"}', headers={"Nats-Msg-Id": "persist"}
        )
    finally:
        await nc.close()
    with redis.Redis.from_url(s.redis_server_url) as r:
        r.set("persist:key", "kept")
    s3_client(s).put_object(Bucket=s.s3_bucket, Key="persist/object", Body=b"kept")


async def read_one_of_each(s: Settings) -> tuple[bytes, bytes | None, bytes]:
    nc = await connect_nats(s, "ops")
    try:
        msg = await nc.jetstream().get_last_msg(s.stream, "images.jobs.process")
    finally:
        await nc.close()
    with redis.Redis.from_url(s.redis_server_url) as r:
        value = r.get("persist:key")
    body = s3_client(s).get_object(Bucket=s.s3_bucket, Key="persist/object")["Body"].read()
    return msg.data, value, body


def assert_all_stopped(stack: Stack, pids: dict[str, int | None]) -> None:
    deadline = time.monotonic() + 30
    alive = {n: p for n, p in pids.items() if p and _alive(p)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = {n: p for n, p in pids.items() if p and _alive(p)}
    assert not alive, f"still running after `down`: {alive}"


@pytest.mark.timeout(900)
def test_up_ps_kill_down_and_persistence(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    settings = test_settings(tmp_path / "var", model_repository=tmp_path_factory.mktemp("models"))
    stack = Stack(settings)
    try:
        up = stack_cli(settings, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://{settings.host}:{settings.gateway_port}" in up.stdout  # where everything listens
        probe_every_server(settings)
        ps = stack_cli(settings, "ps", timeout=60)
        assert ps.returncode == 0, ps.stdout

        # kill -9 of an actor: supervisord restarts it, `ps` is healthy again within 30 s
        old = stack.pids()["coordinator"]
        assert old is not None
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            ps = stack_cli(settings, "ps", timeout=60)
            new = stack.pids()["coordinator"]
            if ps.returncode == 0 and new not in (None, old):
                break
            assert time.monotonic() < deadline, f"not healthy 30 s after kill -9:\n{ps.stdout}"
            time.sleep(1)

        asyncio.run(write_one_of_each(settings))
        pids = {**stack.pids(), "supervisord": stack.supervisord_pid()}
        assert set(ALL) <= set(pids) and all(pids.values())
        down = stack_cli(settings, "down")
        assert down.returncode == 0, down.stderr
        assert_all_stopped(stack, pids)

        # the servers start again over the same data folder: the message, the key and the object are there
        up = stack_cli(settings, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        data, value, body = asyncio.run(read_one_of_each(settings))
        assert (data, value, body) == (b'{"persist":"me"}', b"kept", b"kept")
        pids = {**stack.pids(), "supervisord": stack.supervisord_pid()}
    finally:
        stack_cli(settings, "down")
    assert_all_stopped(stack, pids)
