"""Clean refusals (``gateway/admission.py``): an upload the mesh cannot take is answered 503 or 507 before
anything is stored, and uploads resume by themselves once there is room again.

A private stack without coordinator or Triton (NATS, Redis, the S3 store, the config actor, the gateway), so the
backlog only moves when the test says: the test plays the coordinators, draining their durable consumer by hand.
Its JetStream store limit is tiny (``jetstream_max_bytes``), so some dozens of uploads fill it; Redis's limit is
its own ``maxmemory``, which the test sets a little above what Redis holds (an operator's ``CONFIG SET``). The
object store's limit has a second such stack of its own (with the indexer, for ``DELETE``), so its small
``object_store_max_bytes`` refuses none of the other tests' uploads.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from actors.adapters.config_client import ConfigClient
from actors.adapters.object_store import ORIGINALS_PREFIX
from actors.settings import Settings
from actors.streams import coordinator_consumer
from ops.stack.supervisor import Stack
from tests.helpers import ops_connection, running_stack, s3_client, wait_until
from tests.images import distinct_jpegs

STORE_LIMIT = 128 * 1024  # JetStream bytes: the config bucket and some 150 jobs and events (~0.7 KB each)


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        Path(tmp_path_factory.mktemp("admission")),
        only=("nats", "redis", "s3", "config", "gateway"),
        export_models=False,
        timeout_s=120,
        jetstream_max_bytes=STORE_LIMIT,
    ) as stack:
        yield stack


@pytest.fixture
async def gateway(bare: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with client(bare.settings) as c:
        yield c


def client(s: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://{s.host}:{s.gateway_port}", timeout=30)


def stored(s: Settings) -> dict[str, int]:
    """What uploads leave behind: S3 objects and Redis image records."""
    listing = s3_client(s).list_objects_v2(Bucket=s.s3_bucket)
    with redis.Redis.from_url(s.redis_server_url) as r:
        records = sum(
            1 for k in r.scan_iter(match=f"{s.redis_prefix}:image:*") if not k.endswith(b":history")
        )
    return {"objects": int(listing.get("KeyCount", 0)), "records": records}


async def resources(gateway: httpx.AsyncClient) -> dict[str, Any]:
    r = await gateway.get("/status")
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()["resources"]
    return found


def upload(data: bytes) -> dict[str, Any]:
    return {"files": {"file": ("a.jpg", data, "image/jpeg")}}


async def fill_until_refused(
    gateway: httpx.AsyncClient, s: Settings, images: Iterator[bytes], resource: str
) -> None:
    """Upload until the gateway refuses with 507 naming ``resource`` (after at least one upload: it filled up
    with this test's uploads, not before); the next upload is refused too, and stores nothing."""
    accepted = 0
    for data in images:
        refused = await gateway.post("/images/upload", **upload(data))
        if refused.status_code != 202:
            break
        accepted += 1
    else:
        pytest.fail(f"{accepted} uploads did not fill {resource}: {await resources(gateway)}")
    assert refused.status_code == 507, refused.text
    assert refused.json()["error"]["code"] == "insufficient_storage"
    assert refused.json()["error"]["message"].startswith(f"{resource}:"), refused.text
    assert accepted > 0
    before = stored(s)
    assert (await gateway.post("/images/upload", **upload(next(images)))).status_code == 507
    assert stored(s) == before  # refused before anything was stored


async def test_a_full_backlog_is_refused_with_503_and_uploads_resume_as_the_coordinators_drain_it(
    bare: Stack, gateway: httpx.AsyncClient
) -> None:
    s = bare.settings
    images = iter(distinct_jpegs(6, seed=401))
    async with ops_connection(s) as nc:
        config = ConfigClient(nc)
        await config.set("max_backlog", 2)
        try:
            await wait_until(
                "the gateway follows max_backlog",
                lambda: _limit_is(gateway, "backlog", 2),
            )
            for _ in range(2):
                assert (await gateway.post("/images/upload", **upload(next(images)))).status_code == 202
            before = stored(s)
            refused = await gateway.post("/images/upload", **upload(next(images)))
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "backlog_full"
            assert "2 jobs" in refused.json()["error"]["message"]
            assert int(refused.headers["Retry-After"]) > 0
            assert stored(s) == before  # refused before anything was stored
            assert (await resources(gateway))["backlog"] == {"used": 2, "limit": 2, "unit": "jobs"}
            status = (await gateway.get("/status")).json()
            assert status["version"] == importlib.metadata.version("image-mesh")
            metrics = (await gateway.get("/metrics")).text
            assert 'mesh_resource_used{resource="backlog"} 2.0' in metrics
            assert 'mesh_resource_limit{resource="backlog"} 2.0' in metrics

            # the coordinators take one job and finish it: room again, and the same client is accepted
            js = nc.jetstream()
            await js.add_consumer(s.stream, coordinator_consumer(s, 5, 30.0))
            sub = await js.pull_subscribe_bind(s.consumer, s.stream)
            (job,) = await sub.fetch(1, timeout=5)
            await job.ack_sync()
            again = await gateway.post("/images/upload", **upload(next(images)))
            assert again.status_code == 202, again.text
            assert stored(s)["records"] == before["records"] + 1
        finally:
            await config.set("max_backlog", 0)


async def test_redis_near_its_maxmemory_is_refused_with_507_naming_it_until_room_returns(
    bare: Stack, gateway: httpx.AsyncClient
) -> None:
    s = bare.settings
    images = iter(distinct_jpegs(200, size=(64, 48), seed=403))
    with redis.Redis.from_url(s.redis_server_url) as r:
        used = int(r.info("memory")["used_memory"])
        maxmemory = int((used + 64 * 1024) / s.storage_refuse_at)  # refused about 64 KB from now
        r.config_set("maxmemory", maxmemory)
        try:
            await wait_until("the gateway sees maxmemory", lambda: _limit_is_set(gateway, "redis"))
            await fill_until_refused(gateway, s, images, "redis")
            memory = (await resources(gateway))["redis"]
            assert memory["used"] >= memory["limit"] == int(maxmemory * s.storage_refuse_at)
        finally:
            r.config_set("maxmemory", 0)  # an operator gives Redis room: uploads resume, no restart
    await wait_until("room in Redis", lambda: _below_limit(gateway, "redis"), timeout_s=30, every_s=0.2)
    assert (await gateway.post("/images/upload", **upload(next(images)))).status_code == 202


async def test_a_nearly_full_job_store_is_refused_with_507_naming_it_until_room_returns(
    bare: Stack, gateway: httpx.AsyncClient
) -> None:
    s = bare.settings
    images = iter(distinct_jpegs(400, size=(64, 48), seed=402))
    limit = int(STORE_LIMIT * s.storage_refuse_at)
    assert (await resources(gateway))["jetstream"]["limit"] == limit
    await fill_until_refused(gateway, s, images, "jetstream")
    store = (await resources(gateway))["jetstream"]
    assert store["used"] >= store["limit"] == limit

    # an operator makes room (the events stream's history is expendable): uploads resume, no restart
    async with ops_connection(s) as nc:
        await nc.jetstream().purge_stream(s.events_stream)
    await wait_until(
        "room in the job store", lambda: _below_limit(gateway, "jetstream"), timeout_s=30, every_s=0.2
    )
    assert (await gateway.post("/images/upload", **upload(next(images)))).status_code == 202


OBJECT_STORE_LIMIT = 256 * 1024  # bytes in the bucket: some 20 uploads of ~12 KB


@pytest.fixture(scope="module")
def small_bucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        Path(tmp_path_factory.mktemp("admission-objects")),
        only=("nats", "redis", "s3", "config", "indexer", "gateway"),
        export_models=False,
        timeout_s=120,
        object_store_max_bytes=OBJECT_STORE_LIMIT,
        object_store_usage_refresh_s=0.5,
    ) as stack:
        yield stack


async def test_a_nearly_full_object_store_is_refused_with_507_naming_it_until_images_are_deleted(
    small_bucket: Stack,
) -> None:
    s = small_bucket.settings
    images = iter(distinct_jpegs(80, size=(512, 384), seed=404))
    limit = int(OBJECT_STORE_LIMIT * s.storage_refuse_at)
    async with client(s) as gateway:
        start = (await resources(gateway))["object_store"]  # what the start-up stored (not 0: a layout stamp)
        assert start["used"] < start["limit"] == limit and start["unit"] == "bytes"
        await fill_until_refused(gateway, s, images, "object_store")
        objects = (await resources(gateway))["object_store"]
        assert objects["used"] >= objects["limit"] == limit
        held = s3_client(s).list_objects_v2(Bucket=s.s3_bucket)["Contents"]
        assert objects["used"] == sum(o["Size"] for o in held)  # every upload here is in the listing by now
        metrics = (await gateway.get("/metrics")).text
        assert f'mesh_resource_limit{{resource="object_store"}} {float(limit)}' in metrics

        # a user makes room: deleting a third of the images is enough, and uploads resume by themselves
        originals = [str(o["Key"]) for o in held if str(o["Key"]).startswith(ORIGINALS_PREFIX)]
        for key in originals[: len(originals) // 3]:
            image_id = key.rsplit("/", 1)[-1]
            assert (await gateway.delete(f"/images/{image_id}")).status_code == 204
        await wait_until(
            "room in the object store",
            lambda: _below_limit(gateway, "object_store"),
            timeout_s=30,
            every_s=0.2,
        )
        again = await gateway.post("/images/upload", **upload(next(images)))
        assert again.status_code == 202, again.text


async def _limit_is(gateway: httpx.AsyncClient, name: str, limit: int) -> bool:
    return bool((await resources(gateway))[name]["limit"] == limit)


async def _below_limit(gateway: httpx.AsyncClient, name: str) -> bool:
    found = (await resources(gateway))[name]
    return bool(found["limit"] == 0 or found["used"] < found["limit"])


async def _limit_is_set(gateway: httpx.AsyncClient, name: str) -> bool:
    return bool((await resources(gateway))[name]["limit"] > 0)
