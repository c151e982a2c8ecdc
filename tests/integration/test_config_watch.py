"""Readers that follow the Config DB with a NATS KV watch (``ConfigClient`` started), against real NATS.

Every reader here polls ``config.get`` only every few hours (``config_poll_s``): a change that shows up within
seconds came through the watch. The tests wait on the condition (``get()`` answering the new value), never on a
clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError

from actors.adapters.config_client import ConfigClient, mesh_config_defaults
from actors.contract import MeshConfig
from actors.runtime import connect_nats
from actors.settings import Settings
from tests.integration.configdb import config_actor, fresh_config_db, wait_until

HOURS = 3 * 3600.0
Check = Callable[[], Awaitable[bool]]


@pytest.fixture
async def cfg_settings(server_settings: Settings, ops_nc: Client) -> AsyncIterator[Settings]:
    """A fresh Config DB; readers poll config.get only every few hours (so only the watch can be fast)."""
    async with fresh_config_db(server_settings, ops_nc) as s:
        yield s.model_copy(update={"config_poll_s": HOURS})


@pytest.fixture
async def gateway_nc(server_settings: Settings) -> AsyncIterator[Client]:
    nc = await connect_nats(server_settings, "gateway")
    yield nc
    await nc.close()


def equals(reader: ConfigClient, **fields: object) -> Check:
    """A check for ``wait_until``: the reader's ``get()`` has these values."""

    async def check() -> bool:
        cfg = await reader.get()
        return all(getattr(cfg, k) == v for k, v in fields.items())

    return check


async def test_a_change_reaches_a_reader_on_another_connection_at_once(
    cfg_settings: Settings, ops_nc: Client, gateway_nc: Client
) -> None:
    s = cfg_settings
    async with config_actor(s), ConfigClient.from_settings(gateway_nc, s) as reader:
        assert reader.live
        assert await reader.get() == mesh_config_defaults(s)
        await ConfigClient(ops_nc).set("max_k", 42)  # through config.set, on the ops user's connection
        await wait_until("max_k = 42 at the reader", equals(reader, max_k=42))
        # an operator's direct writes: a bare word is a string; a bad value means that key's default
        kv = await ops_nc.jetstream().key_value(s.config_bucket)
        await kv.put("active_model", b"clip_vit_b32")
        await kv.put("ef_runtime", b'"lots"')
        await kv.put("default_k", b"12")
        await wait_until("the operator's writes at the reader", equals(reader, default_k=12))
        cfg = await reader.get()
        assert (cfg.active_model, cfg.ef_runtime, cfg.max_k) == ("clip_vit_b32", MeshConfig().ef_runtime, 42)
        await kv.delete("max_k")  # a deleted key falls back to its default
        await wait_until("max_k back to its default", equals(reader, max_k=MeshConfig().max_k))
    assert not reader.live


async def test_a_writer_reads_its_own_write(cfg_settings: Settings, server_settings: Settings) -> None:
    nc = await connect_nats(server_settings, "coordinator")  # the user that may config.set (the switch)
    try:
        async with config_actor(cfg_settings), ConfigClient.from_settings(nc, cfg_settings) as client:
            new = await client.set("coordinator_concurrency", 9)
            assert new.coordinator_concurrency == 9
            assert (await client.get()).coordinator_concurrency == 9  # no wait: set() returns once it shows
            assert (await client.read()).coordinator_concurrency == 9
    finally:
        await nc.close()


async def test_start_without_config_db_serves_fallback_then_follows_it(
    cfg_settings: Settings, ops_nc: Client, gateway_nc: Client
) -> None:
    # no bucket, no config actor: start() must not hang, and the seeds from settings stand in
    reader_settings = cfg_settings.model_copy(update={"max_pixels": 77})
    started = time.monotonic()
    async with ConfigClient.from_settings(gateway_nc, reader_settings) as reader:
        assert time.monotonic() - started < 10
        assert not reader.live
        assert await reader.get() == mesh_config_defaults(reader_settings)
        # the config actor comes up (other seeds), creates the bucket: the reader follows it without a restart
        actor_settings = cfg_settings.model_copy(update={"max_pixels": 88})
        async with config_actor(actor_settings):
            await wait_until("the Config DB at the reader", equals(reader, max_pixels=88), timeout_s=15)
            assert reader.live
            await ConfigClient(ops_nc).set("max_pixels", 99)
            await wait_until("max_pixels = 99 at the reader", equals(reader, max_pixels=99))
        # the config actor stops: reads come from the bucket, so changes still arrive
        kv = await ops_nc.jetstream().key_value(cfg_settings.config_bucket)
        await kv.put("max_pixels", b"111")
        await wait_until("a change with the config actor down", equals(reader, max_pixels=111))


class CuttableProxy:
    """A TCP proxy in front of NATS whose connections the test cuts: a network outage for one client."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.target_port, self.port = host, port, 0
        self.down = False
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()

    def cut(self) -> None:
        """Close every proxied connection and refuse new ones until ``restore``."""
        self.down = True
        for w in self._writers:
            w.close()
        self._writers.clear()

    def restore(self) -> None:
        self.down = False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()


async def test_reader_reopens_its_watch_after_a_nats_outage(cfg_settings: Settings, ops_nc: Client) -> None:
    s = cfg_settings
    async with config_actor(s), CuttableProxy(s.host, s.nats_port) as proxy:
        nc = await connect_nats(s.model_copy(update={"nats_url": f"nats://{s.host}:{proxy.port}"}), "gateway")
        try:
            async with ConfigClient.from_settings(nc, s) as reader:
                assert reader.live
                proxy.cut()  # the reader's NATS connection is gone; the change below is published meanwhile
                await wait_until("the reader's connection down", holds(lambda: not nc.is_connected))
                # and its watch's consumer with it, as after a server restart (they are in memory)
                stream = f"KV_{s.config_bucket}"
                for info in await ops_nc.jetstream().consumers_info(stream):
                    await ops_nc.jetstream().delete_consumer(stream, info.name)
                await ConfigClient(ops_nc).set("max_k", 33)
                proxy.restore()
                # a few seconds: less than nats-py's own repair of a lost consumer (two missed heartbeats, 10 s)
                await wait_until("max_k = 33 after the outage", equals(reader, max_k=33))
                assert reader.live
                await ConfigClient(ops_nc).set("max_k", 34)  # and the reopened watch keeps following
                await wait_until("max_k = 34", equals(reader, max_k=34))
        finally:
            await nc.close()


def holds(predicate: Callable[[], bool]) -> Check:
    """A check for ``wait_until`` from a plain predicate."""

    async def check() -> bool:
        return predicate()

    return check


async def test_gateway_user_may_watch_the_config_db_but_not_write_it(
    cfg_settings: Settings, ops_nc: Client, gateway_nc: Client
) -> None:
    async with config_actor(cfg_settings):
        kv = await gateway_nc.jetstream(timeout=1).key_value(cfg_settings.config_bucket)
        watcher = await kv.watch("max_k")
        first = await watcher.updates(timeout=2)
        assert first is not None and first.value == b"100"
        await watcher.stop()
        with pytest.raises(NatsTimeoutError):  # a denied publish is never acknowledged
            await kv.put("max_k", b"1")
        with pytest.raises(NatsTimeoutError):
            await gateway_nc.jetstream(timeout=1).delete_key_value(cfg_settings.config_bucket)
        assert (
            await (await ops_nc.jetstream().key_value(cfg_settings.config_bucket)).get("max_k")
        ).value == b"100"
