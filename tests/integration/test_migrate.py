"""``mesh migrate`` (ops/migrate.py) against real servers: a stack with layout-1 data (nothing stamped, as
release 0.2.0 wrote it) is stamped everywhere, a second run changes nothing, a run stopped part way resumes
where it stopped, a record deleted meanwhile stays deleted, and a stack of a newer layout is refused.

JetStream adds its own ``_nats.*`` metadata keys; the tests look at the mesh's. Each test has its own Redis prefix, consumer and Config DB bucket; the work streams are the shared ones (their
subjects are fixed), stripped of their stamp first. The end-to-end upgrade of data written by the previous
release's own processes is tests/e2e/test_versions.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from actors import contract
from actors.adapters.object_store import ObjectStore
from actors.contract import LAYOUT, LAYOUT_METADATA, LAYOUT_OBJECT, layout_key
from actors.settings import Settings
from ops import migrate
from ops.migrate import Migrator, NewerLayout

RECORDS = 30


@pytest.fixture
async def old_stack(server_settings: Settings, ops_nc: Client) -> AsyncIterator[Settings]:
    """Layout-1 data under a fresh prefix: records without ``layout``, histories, streams and a consumer
    without metadata, a Config DB bucket without it."""
    tag = uuid.uuid4().hex[:8]
    s = server_settings.model_copy(
        update={"redis_prefix": f"mig{tag}", "consumer": f"mig-{tag}", "config_bucket": f"mig{tag}"}
    )
    js = ops_nc.jetstream()
    for name in (s.stream, s.events_stream):  # the shared streams, as release 0.2.0 made them
        cfg = (await js.stream_info(name)).config
        cfg.metadata = {}
        await js.update_stream(cfg)
    await js.add_consumer(
        s.stream,
        ConsumerConfig(durable_name=s.consumer, ack_policy=AckPolicy.EXPLICIT, ack_wait=42.0, max_deliver=7),
    )
    await js.create_key_value(bucket=s.config_bucket)
    r = aioredis.Redis.from_url(s.redis_server_url)
    for i in range(RECORDS):
        key = f"{s.redis_prefix}:image:img{i:03d}"
        await r.hset(key, mapping={"image_id": f"img{i:03d}", "status": "done", "sha256": f"{i:064x}"})
        await r.rpush(key + ":history", json.dumps({"status": "done", "at": 1.0}))
    yield s
    async for key in r.scan_iter(match=f"{s.redis_prefix}:*"):
        await r.delete(key)
    await r.aclose()
    await js.delete_consumer(s.stream, s.consumer)
    await js.delete_key_value(s.config_bucket)


async def stamps(s: Settings) -> dict[str, str | None]:
    """Each record's layout field (None: unstamped)."""
    async with aioredis.Redis.from_url(s.redis_server_url, decode_responses=True) as r:
        return {
            key: await r.hget(key, "layout")
            async for key in r.scan_iter(match=f"{s.redis_prefix}:image:*", _type="hash")
        }


async def test_a_layout_one_stack_is_stamped_everywhere_and_a_second_run_changes_nothing(
    old_stack: Settings, ops_nc: Client
) -> None:
    s, js = old_stack, ops_nc.jetstream()
    assert set((await stamps(s)).values()) == {None}

    first = await migrate.migrate(s)

    assert (first.found, first.complete, first.stamped) == (contract.FIRST_LAYOUT, True, RECORDS)
    assert first.steps == ["records", "streams", "config", "indexes", "objects"]
    assert set((await stamps(s)).values()) == {str(LAYOUT)}
    async with aioredis.Redis.from_url(s.redis_server_url, decode_responses=True) as r:
        assert await r.hgetall(layout_key(s.redis_prefix)) == {"version": str(LAYOUT), "indexes": str(LAYOUT)}
        assert await r.type(f"{s.redis_prefix}:image:img000:history") == "list"  # only hashes are stamped
    for name in (s.stream, s.events_stream, f"KV_{s.config_bucket}"):
        assert ((await js.stream_info(name)).config.metadata or {}).get(LAYOUT_METADATA) == str(LAYOUT), name
    consumer = (await js.consumer_info(s.stream, s.consumer)).config
    assert (consumer.metadata or {}).get(LAYOUT_METADATA) == str(LAYOUT)
    assert (consumer.ack_wait, consumer.max_deliver) == (42.0, 7)  # the rest of its config as it was
    async with ObjectStore(s, identity="ops") as store:
        assert json.loads(await store.get(LAYOUT_OBJECT)) == {"layout": LAYOUT}

    again = await migrate.migrate(s)
    assert (again.found, again.complete, again.stamped, again.steps) == (LAYOUT, True, 0, [])
    full = await migrate.migrate(s, full=True)
    assert (full.complete, full.stamped, full.scanned) == (True, 0, RECORDS)


async def test_a_migration_stopped_part_way_resumes_where_it_stopped(
    old_stack: Settings, ops_nc: Client
) -> None:
    s = old_stack
    part = await migrate.migrate(s, batch=1, max_batches=3)
    assert not part.complete and part.steps == []
    async with aioredis.Redis.from_url(s.redis_server_url, decode_responses=True) as r:
        saved = await r.hgetall(layout_key(s.redis_prefix))
    assert "version" not in saved and int(saved["records_cursor"]) > 0
    left = list((await stamps(s)).values()).count(None)
    assert left == RECORDS - part.stamped > 0

    rest = await migrate.migrate(s, batch=4)

    assert rest.complete and rest.found == contract.FIRST_LAYOUT
    assert part.stamped + rest.stamped == RECORDS  # each record stamped once, none skipped
    assert set((await stamps(s)).values()) == {str(LAYOUT)}


async def test_a_record_deleted_during_the_migration_is_not_brought_back(
    old_stack: Settings, ops_nc: Client
) -> None:
    s = old_stack
    gone = f"{s.redis_prefix}:image:img007"
    async with aioredis.Redis.from_url(s.redis_server_url) as r, ObjectStore(s, identity="ops") as store:
        migrator = Migrator(s, r, ops_nc.jetstream(), store)
        await r.delete(gone)  # deleted after a SCAN saw it: the batch still names it
        stamped = await migrator._stamp(keys=[gone, f"{s.redis_prefix}:image:img008"], args=["layout", "2"])
        assert stamped == 1 and not await r.exists(gone)


async def test_a_stack_of_a_newer_layout_is_refused(old_stack: Settings, ops_nc: Client) -> None:
    s = old_stack
    async with aioredis.Redis.from_url(s.redis_server_url) as r:
        await r.hset(layout_key(s.redis_prefix), "version", str(LAYOUT + 1))
    with pytest.raises(NewerLayout, match=f"layout {LAYOUT + 1}"):
        await migrate.migrate(s)
    assert set((await stamps(s)).values()) == {None}  # nothing touched
