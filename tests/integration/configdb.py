"""Helpers for the Config DB's integration tests: a fresh bucket, the config actor in this process, HTTP waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from actors.config_actor import start
from actors.runtime import ActorProcess
from actors.settings import Settings
from tests.conftest import free_port


async def delete_bucket(nc: Client, bucket: str) -> None:
    try:
        await nc.jetstream().delete_key_value(bucket)
    except NotFoundError:
        pass


@asynccontextmanager
async def fresh_config_db(server_settings: Settings, ops_nc: Client) -> AsyncIterator[Settings]:
    """The session's servers with an empty Config DB (none at all) and this test's own config HTTP port.

    The bucket keeps its real name: nats.conf grants the service users that bucket only (permissions match
    whole tokens, so a per-test name cannot be allowed), so isolation is no bucket at start and at end.
    """
    s = server_settings.model_copy(update={"config_http_port": free_port()})
    assert s.config_bucket == "config"
    await delete_bucket(ops_nc, s.config_bucket)
    try:
        yield s
    finally:
        await delete_bucket(ops_nc, s.config_bucket)


async def wait_http(url: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while True:
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer in {timeout_s}s")
            await asyncio.sleep(0.05)


async def wait_until(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s}s"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def config_actor(s: Settings) -> AsyncIterator[ActorProcess]:
    """The config actor in this process, connected as the `config` NATS user, stopped (drained) at the end."""
    async with ActorProcess("config", s, s.config_http_port) as proc:
        await start(proc)
        await wait_http(f"http://{s.host}:{s.config_http_port}/health")
        try:
            yield proc
        finally:
            proc.stop()
