"""The config actor against real NATS: its Config DB bucket, its micro service, its HTTP side, and the
one-off client (not started) that keeps working while it is down. Each test gets a fresh bucket and its own
HTTP port. Readers that follow the bucket with a watch are in ``test_config_watch.py``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError

from actors import contract
from actors.adapters.config_client import ConfigClient, mesh_config_defaults
from actors.config_rules import FIELDS
from actors.contract import ConfigGet, MeshConfig
from actors.errors import RetryableError, ServiceCallError
from actors.rpc import call
from actors.runtime import connect_nats
from actors.settings import Settings
from ops.stack.supervisor import settings_env
from tests.integration.configdb import config_actor, fresh_config_db, wait_http

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def cfg_settings(server_settings: Settings, ops_nc: Client) -> AsyncIterator[Settings]:
    """The session's servers with a fresh Config DB and this test's own HTTP port."""
    async with fresh_config_db(server_settings, ops_nc) as s:
        yield s


@pytest.fixture
async def gateway_nc(server_settings: Settings) -> AsyncIterator[Client]:
    """A connection as the `gateway` user: it may ask `config.get`, nothing else of the config service."""
    nc = await connect_nats(server_settings, "gateway")
    yield nc
    await nc.close()


async def stored(nc: Client, s: Settings) -> dict[str, tuple[bytes, int]]:
    """The bucket's raw values and revisions, read as an operator would."""
    kv = await nc.jetstream().key_value(s.config_bucket)
    out = {}
    for key in FIELDS:
        entry = await kv.get(key)
        out[key] = (entry.value or b"", entry.revision or 0)
    return out


async def test_defaults_seeded_once_and_kept_on_restart(cfg_settings: Settings, ops_nc: Client) -> None:
    s1 = cfg_settings.model_copy(update={"max_upload_bytes": 1234, "default_model": "first_model"})
    async with config_actor(s1):
        got = await call(ops_nc, contract.CONFIG_GET, ConfigGet(), MeshConfig)
        assert got == mesh_config_defaults(s1)
        assert (got.active_model, got.max_upload_bytes) == ("first_model", 1234)
        raw = await stored(ops_nc, s1)
        assert set(raw) == set(FIELDS)  # one key per field
        assert raw["max_upload_bytes"][0] == b"1234"
        assert json.loads(raw["backoff_s"][0]) == MeshConfig().backoff_s
        await ConfigClient(ops_nc).set("max_k", 42)

    # other seeds on the second start: what the bucket holds wins
    s2 = s1.model_copy(update={"max_upload_bytes": 999, "default_model": "second_model"})
    async with config_actor(s2):
        got = await call(ops_nc, contract.CONFIG_GET, ConfigGet(), MeshConfig)
        assert (got.active_model, got.max_upload_bytes, got.max_k) == ("first_model", 1234, 42)


async def test_invalid_set_is_refused_and_nothing_written(cfg_settings: Settings, ops_nc: Client) -> None:
    client = ConfigClient(ops_nc)
    async with config_actor(cfg_settings):
        before = await stored(ops_nc, cfg_settings)
        for key, value, reason in [
            ("max_k", 0, "must be between 1 and 10000, got 0"),
            ("max_k", "50", "Expected `int`, got `str`"),
            ("near_duplicate_threshold", 1.5, "must be > 0 and <= 1"),
            ("backoff_s", [], "must not be empty"),
            ("nope", 1, "unknown key"),
        ]:
            with pytest.raises(ServiceCallError) as info:
                await client.set(key, value)
            assert info.value.code == "400"
            assert f"invalid config {key!r}" in info.value.description
            assert reason in info.value.description
        assert await stored(ops_nc, cfg_settings) == before
        assert await client.get() == MeshConfig()


async def test_operator_edits_are_seen_and_bad_ones_ignored(cfg_settings: Settings, ops_nc: Client) -> None:
    async with config_actor(cfg_settings):
        kv = await ops_nc.jetstream().key_value(cfg_settings.config_bucket)
        await kv.put("max_k", b"50")  # nats kv put config max_k 50
        await kv.put("active_model", b"clip_vit_b32")  # a bare word, no JSON quotes
        await kv.put("ef_runtime", b'"lots"')  # wrong type
        await kv.put("near_duplicate_threshold", b"not json")
        got = await call(ops_nc, contract.CONFIG_GET, ConfigGet(), MeshConfig)
        assert (got.max_k, got.active_model) == (50, "clip_vit_b32")
        assert (got.ef_runtime, got.near_duplicate_threshold) == (
            200,
            MeshConfig().near_duplicate_threshold,
        )  # defaults for the bad keys
        # still serving, and a set repairs the bad key
        fixed = await ConfigClient(ops_nc).set("ef_runtime", 300)
        assert fixed.ef_runtime == 300


async def test_http_config_redacts_secrets(cfg_settings: Settings) -> None:
    s = cfg_settings
    async with config_actor(s):
        async with httpx.AsyncClient(base_url=f"http://{s.host}:{s.config_http_port}") as http:
            r = await http.get("/config")
            assert (await http.get("/health")).status_code == 200
            assert (await http.get("/metrics")).status_code == 200
    assert r.status_code == 200
    body = r.json()
    assert body["config"] == msgspec.to_builtins(mesh_config_defaults(s))
    assert body["bucket"] == s.config_bucket
    assert body["settings"]["nats_port"] == s.nats_port
    assert body["settings"]["redis_password"] == "***"
    assert body["settings"]["redis_server_url"].startswith("redis://***@")
    secrets = [s.nats_password(u) for u in ("gateway", "coordinator", "config", "indexer", "ops")]
    secrets += [s.redis_password, s.s3_secret_key, s.s3_access_key]
    for secret in secrets:
        assert secret not in r.text


async def test_service_is_discoverable(cfg_settings: Settings, ops_nc: Client) -> None:
    async with config_actor(cfg_settings):
        ping = json.loads((await ops_nc.request("$SRV.PING.config", b"", timeout=2)).data)
        info = json.loads((await ops_nc.request("$SRV.INFO.config", b"", timeout=2)).data)
    assert ping["name"] == contract.CONFIG_SERVICE
    assert {e["subject"] for e in info["endpoints"]} == {contract.CONFIG_GET, contract.CONFIG_SET}


async def test_one_off_client_serves_last_good_value_while_actor_is_down(
    cfg_settings: Settings, ops_nc: Client, gateway_nc: Client
) -> None:
    reader = ConfigClient(gateway_nc)  # not started: every get() asks config.get
    async with config_actor(cfg_settings):
        await ConfigClient(ops_nc).set("default_k", 7)
        assert (await reader.get()).default_k == 7
    assert (await reader.get()).default_k == 7  # nobody answers: stale but working
    # a process that starts during the outage serves its fallback
    fallback = mesh_config_defaults(cfg_settings.model_copy(update={"max_pixels": 77}))
    assert (await ConfigClient(gateway_nc, fallback=fallback).get()).max_pixels == 77
    # and the reader has the live value again once the actor is back
    async with config_actor(cfg_settings):
        assert (await reader.get()).default_k == 7
        await ConfigClient(ops_nc).set("default_k", 8)
        assert (await reader.get()).default_k == 8


async def test_config_user_may_watch_its_bucket_and_nothing_else(
    cfg_settings: Settings, ops_nc: Client
) -> None:
    # the actor reads on every get; ConfigClient's watch runs as the gateway and coordinator users
    async with config_actor(cfg_settings):
        nc = await connect_nats(cfg_settings, "config")
        try:
            kv = await nc.jetstream().key_value(cfg_settings.config_bucket)
            watcher = await kv.watch("max_k")
            first = await watcher.updates(timeout=2)
            assert first is not None and first.value == b"100"
            await ConfigClient(ops_nc).set("max_k", 60)
            change = await watcher.updates(timeout=2)
            while change is None:  # the end-of-initial-values marker
                change = await watcher.updates(timeout=2)
            assert change.value == b"60"
            await watcher.stop()
            # least privilege: the work stream is not the config user's business
            with pytest.raises(NatsTimeoutError):
                await nc.jetstream(timeout=1).stream_info(cfg_settings.stream)
        finally:
            await nc.close()


async def test_entry_point_runs_as_a_process(cfg_settings: Settings, ops_nc: Client, tmp_path: Path) -> None:
    s = cfg_settings
    env = {**os.environ, **settings_env(s)}
    log_path = tmp_path / "config.log"
    with log_path.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "actors", "config", cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            await wait_http(f"http://{s.host}:{s.config_http_port}/health", timeout_s=30)
            deadline = time.monotonic() + 10
            while True:  # HTTP comes up before the service is registered
                try:
                    got = await call(ops_nc, contract.CONFIG_GET, ConfigGet(), MeshConfig, timeout=1)
                    break
                except RetryableError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            assert got == mesh_config_defaults(s)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = log_path.read_text()
    assert '"event": "actor.stopped"' in text, text
    assert '"event": "config.seeded"' in text, text
