"""The model switch against the real Redis of the session stack: its lease (one driver at a time, a dead
holder's lease expires) and its progress store (what ``GET /models`` reads)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client

from actors.adapters.config_client import ConfigClient
from actors.adapters.job_queue import JobQueue
from actors.adapters.switch_progress import Progress, SwitchProgress, SwitchState
from actors.model_switch import ModelSwitcher, lease_key
from actors.settings import Settings

LEASE_S = 0.5


@pytest.fixture
async def redis_client(server_settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(server_settings.redis_server_url)
    yield client
    await client.aclose()


def replica(redis: aioredis.Redis, prefix: str) -> ModelSwitcher:
    """A switcher whose lease is all that runs: NATS, Triton and the stores are never touched."""
    return ModelSwitcher(
        prefix=prefix,
        redis=redis,
        jobs=JobQueue(Client().jetstream()),
        config=ConfigClient(Client()),
        store=None,  # type: ignore[arg-type]
        vectors=None,  # type: ignore[arg-type]
        embedder=None,  # type: ignore[arg-type]
        lease_s=LEASE_S,
    )


async def test_one_replica_drives_and_a_dead_holders_lease_expires(redis_client: aioredis.Redis) -> None:
    prefix = f"t_lease_{uuid.uuid4().hex[:8]}"
    a, b = replica(redis_client, prefix), replica(redis_client, prefix)
    try:
        assert await a._hold_lease()
        assert not await b._hold_lease()  # held: b waits
        for _ in range(3):  # a renews every tick: its lease outlives LEASE_S
            await asyncio.sleep(LEASE_S / 2)
            assert await a._hold_lease()
            assert not await b._hold_lease()
        assert await redis_client.get(lease_key(prefix)) == a.token.encode()

        await asyncio.sleep(LEASE_S + 0.2)  # a stops renewing (it died): its lease expires
        assert await b._hold_lease()
        assert not await a._hold_lease()  # a comes back: the lease is b's now, a does not drive

        await b._release()
        assert await redis_client.get(lease_key(prefix)) is None
        assert await a._hold_lease()
        await b._release()  # not holding: nothing to give up, a keeps it
        assert await redis_client.get(lease_key(prefix)) == a.token.encode()
    finally:
        await a._release()
        await b._release()


async def test_progress_round_trips_and_the_latest_switch_is_the_default(server_settings: Settings) -> None:
    prefix = f"t_progress_{uuid.uuid4().hex[:8]}"
    async with SwitchProgress.from_url(server_settings.redis_server_url, prefix) as store:
        assert await store.read() is None
        assert await store.read("clip_image") is None
        prog = Progress(
            model="clip_image", state=SwitchState.BUILDING, from_model="efficientnet_lite0", total=4
        )
        await store.save(prog)
        assert await store.read() is None  # not marked latest yet
        await store.mark_latest("clip_image")
        assert await store.read() == prog
        prog.done, prog.state = 4, SwitchState.DONE
        await store.save(prog)
        assert await store.read("clip_image") == prog
        await store.redis.delete(f"{prefix}:switch:clip_image", f"{prefix}:switch:last")
