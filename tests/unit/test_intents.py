"""``gateway.intents``: the sweep that removes objects a dead gateway stored but never recorded.

The decision is pure (``dead_intents``); the sweep around it runs against in-memory fakes of Redis, the
workflow store and the object store.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from actors.adapters.object_store import object_key
from actors.contract import ImageRecord, Status
from gateway.intents import ALIVE_TTL_S, SWEEP_EVERY_S, UploadIntents, dead_intents, image_id_of
from tests.unit.fakes import FakeObjectStore, FakeRedis, FakeWorkflowStore

HASH = "t:upload_intents"


def test_dead_intents_skips_this_gateway_and_live_ones() -> None:
    intents = {"k1": "me", "k2": "live", "k3": "dead", "k4": "dead", "k5": "other-dead"}
    assert dead_intents(intents, "me", {"live"}) == ["k3", "k4", "k5"]
    assert dead_intents(intents, "me", {"live", "dead", "other-dead"}) == []
    assert dead_intents({}, "me", set()) == []


def test_image_id_of_reverses_object_key() -> None:
    image_id = "ab" + "c" * 30
    assert image_id_of(object_key(image_id)) == image_id


def record(image_id: str) -> ImageRecord:
    return ImageRecord(
        image_id=image_id,
        status=Status.PENDING,
        sha256="s" * 64,
        object_key=object_key(image_id),
        content_type="image/png",
        size_bytes=3,
        width=1,
        height=1,
    )


class World:
    def __init__(self) -> None:
        self.redis = FakeRedis()
        self.store = FakeWorkflowStore()
        self.objects = FakeObjectStore()
        redis: Any = self.redis  # duck-typed stand-in for redis.asyncio.Redis
        self.me = UploadIntents("redis://unused", "t", redis=redis)

    def other_gateway(self, *, alive: bool) -> UploadIntents:
        redis: Any = self.redis
        other = UploadIntents("redis://unused", "t", redis=redis)
        if alive:
            self.redis.keys[f"t:gateway:{other.instance}"] = b"1"
        return other

    async def sweep(self) -> int:
        store: Any = self.store
        objects: Any = self.objects
        return await self.me.sweep(store, objects)

    def intents(self) -> set[str]:
        return {k.decode() for k in self.redis.hashes.get(HASH, {})}


@pytest.fixture
def world() -> World:
    return World()


async def test_dead_gateways_unrecorded_object_is_deleted(world: World) -> None:
    dead = world.other_gateway(alive=False)
    key = object_key("a" * 32)
    world.objects.objects[key] = b"orphan"
    await dead.begin(key)
    assert await world.sweep() == 1
    assert world.objects.deleted == [key] and world.objects.objects == {}
    assert world.intents() == set()


async def test_dead_gateways_recorded_object_is_kept(world: World) -> None:
    dead = world.other_gateway(alive=False)
    rec = record("b" * 32)
    world.store.add(rec)  # it died after the record was written, before it ended the intent
    world.objects.objects[rec.object_key] = b"image"
    await dead.begin(rec.object_key)
    assert await world.sweep() == 1
    assert world.objects.deleted == [] and rec.object_key in world.objects.objects
    assert world.intents() == set()


async def test_live_gateways_and_own_intents_are_untouched(world: World) -> None:
    live = world.other_gateway(alive=True)
    theirs, mine = object_key("c" * 32), object_key("d" * 32)
    await live.begin(theirs)  # a slow upload in flight elsewhere: no record yet, however long it takes
    await world.me.begin(mine)
    assert await world.sweep() == 0
    assert world.objects.deleted == []
    assert world.intents() == {theirs, mine}


async def test_mixed_sweep_settles_only_the_dead(world: World) -> None:
    dead, live = world.other_gateway(alive=False), world.other_gateway(alive=True)
    orphan, recorded, in_flight = object_key("e" * 32), object_key("f" * 32), object_key("0" * 32)
    world.store.add(record("f" * 32))
    for gw, key in ((dead, orphan), (dead, recorded), (live, in_flight)):
        await gw.begin(key)
    assert await world.sweep() == 2
    assert world.objects.deleted == [orphan]
    assert world.intents() == {in_flight}
    assert await world.sweep() == 0  # settled intents are gone: a second sweep does nothing


async def test_end_removes_the_intent(world: World) -> None:
    key = object_key("1" * 32)
    await world.me.begin(key)
    assert world.intents() == {key}
    await world.me.end(key)
    assert world.intents() == set()


def test_alive_ttl_outlasts_several_sweeps() -> None:
    assert ALIVE_TTL_S >= 2 * SWEEP_EVERY_S  # one missed heartbeat does not make a live gateway look dead


async def test_an_intent_whose_removal_found_redis_down_is_removed_by_the_next_round(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = object_key("e" * 32)
    await world.me.begin(key)

    async def down(*_: Any) -> int:
        raise RedisConnectionError("Connection closed by server.")

    with monkeypatch.context() as redis_down:
        redis_down.setattr(world.redis, "hdel", down)
        await world.me.end(key)  # the record exists; Redis went down before the intent's removal
    assert world.intents() == {key}

    store: Any = world.store
    objects: Any = world.objects
    rounds = asyncio.create_task(world.me.run(store, objects))
    try:
        for _ in range(100):
            if not world.intents():
                break
            await asyncio.sleep(0.01)
    finally:
        rounds.cancel()
    assert world.intents() == set()
    assert key not in objects.deleted  # a live gateway's upload: its object stays
