"""The reconciler against real servers (NATS JetStream, Redis with RediSearch, S3), without the actors: where a
record's job is (the stream at its ``job_seq`` and a real consumer's ack floor), S3 continuation tokens and
Redis ``SCAN``/``HSCAN`` cursors walked in small batches, the repairs, and the lease: of two reconcilers asked
for a step at once, one steps, and the cursors it stored are where the next step resumes.

Each test has its own Redis prefix, S3 bucket and durable consumer, so it sees nothing of the other tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from actors import contract
from actors.adapters.events import Events
from actors.adapters.job_queue import JobQueue
from actors.adapters.object_store import ObjectStore, object_key
from actors.adapters.upload_intents import IntentTable
from actors.adapters.vector_index import VectorIndex
from actors.adapters.workflow_store import WorkflowStore
from actors.contract import ImageRecord, MeshConfig, ReconcileRequest, Status
from actors.copies import COPY_CHECK_VERSION
from actors.errors import PermanentError
from actors.reconcile_repairs import Repairer
from actors.reconcile_scan import Inspector, StreamJobs
from actors.reconciler import Reconciler, cursors_key
from actors.recorder import Recorder
from actors.settings import Settings
from tests.helpers import s3_client

MODEL = "m"
DIM = 4
DAY = 86_400.0


class Index:
    """The indexer service's calls, straight on the vector index (no indexer actor here)."""

    def __init__(self, vectors: VectorIndex) -> None:
        self.vectors = vectors

    async def upsert(
        self,
        model: str,
        image_id: str,
        vector: np.ndarray,
        tags: dict[str, str] | None = None,
        trace_id: str = "",
        labels: dict[str, float] | None = None,
    ) -> bool:
        return await self.vectors.upsert(model, image_id, vector, tags, labels=labels)

    async def delete(self, image_id: str, model: str | None = None) -> int:
        return await self.vectors.delete(image_id, model)


@dataclass
class Config:
    cfg: MeshConfig

    async def get(self) -> MeshConfig:
        return self.cfg


@dataclass
class World:
    settings: Settings
    nc: Client
    redis: aioredis.Redis
    store: WorkflowStore
    vectors: VectorIndex
    objects: ObjectStore
    consumer: str
    cfg: MeshConfig

    def reconciler(self, batch: int = 2) -> Reconciler:
        js = self.nc.jetstream()
        intents = IntentTable(self.redis, self.store_prefix)
        inspector = Inspector(
            records=self.store,
            vectors=self.vectors,
            objects=self.objects,
            intents=intents,
            jobs=StreamJobs(js, self.settings.stream, self.consumer),
        )
        repairer = Repairer(
            store=self.store,
            recorder=Recorder(self.store, Events(self.nc)),
            queue=JobQueue(js),
            js=js,
            index=Index(self.vectors),
            objects=self.objects,
            intents=intents,
        )
        return Reconciler(
            prefix=self.store_prefix,
            redis=self.redis,
            config=Config(self.cfg),
            inspector=inspector,
            repairer=repairer,
            batch=batch,
            lease_s=10,
        )

    @property
    def store_prefix(self) -> str:
        return self.settings.redis_prefix

    def record(self, status: Status, at: float, **fields: Any) -> ImageRecord:
        image_id = uuid.uuid4().hex
        # as this version leaves a done image: thumbnail and copy features made, look-alikes verified
        fields.setdefault("thumbnail_key", f"derived/thumbs/256/{image_id[:2]}/{image_id}.webp")
        fields.setdefault("copy_features_key", f"derived/copies/{image_id[:2]}/{image_id}.orb")
        fields.setdefault("copy_check", COPY_CHECK_VERSION)
        return ImageRecord(
            image_id=image_id,
            status=status,
            sha256=hashlib.sha256(image_id.encode()).hexdigest(),
            object_key=object_key(image_id),
            content_type="image/jpeg",
            size_bytes=1,
            width=1,
            height=1,
            created_at=at,
            updated_at=at,
            **fields,
        )

    async def add(self, rec: ImageRecord, *, with_object: bool = True) -> ImageRecord:
        assert await self.store.create(rec) is None
        if with_object:
            await self.objects.put(rec.object_key, b"bytes", "image/jpeg")
        return rec


@pytest.fixture
async def world(server_settings: Settings, ops_nc: Client) -> AsyncIterator[World]:
    tag = uuid.uuid4().hex[:8]
    settings = server_settings.model_copy(update={"redis_prefix": f"rt{tag}", "s3_bucket": f"rt-{tag}"})
    s3_client(settings).create_bucket(Bucket=settings.s3_bucket)
    consumer = f"rt-{tag}"
    js = ops_nc.jetstream()
    # only the jobs published from now on: the stream holds the other tests' jobs too
    await js.add_consumer(
        settings.stream,
        ConsumerConfig(
            durable_name=consumer,
            filter_subject=contract.JOBS_SUBJECT,
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
        ),
    )
    redis = aioredis.Redis.from_url(settings.redis_server_url)
    store = WorkflowStore(settings.redis_server_url, settings.redis_prefix)
    # a grace the config actor would refuse (< 1 s): the objects written by a test are past it at once
    cfg = MeshConfig(active_model=MODEL, reconcile_period_s=60, reconcile_grace_s=0.01)
    try:
        async with VectorIndex.from_settings(settings) as vectors, ObjectStore(settings) as objects:
            await vectors.ensure_index(MODEL, DIM)
            yield World(settings, ops_nc, redis, store, vectors, objects, consumer, cfg)
            await vectors.drop(MODEL)
    finally:
        await js.delete_consumer(settings.stream, consumer)
        await store.close()
        await redis.aclose()


async def test_a_full_pass_finds_where_each_job_is_and_repairs_what_is_wrong(world: World) -> None:
    js = world.nc.jetstream()
    queue = JobQueue(js)
    old, ancient = time.time() - 60, time.time() - DAY
    lost = await world.add(world.record(Status.PENDING, old))  # its publish never happened
    settled = await world.add(world.record(Status.PENDING, old))  # its job acked, the record still pending
    queued = await world.add(world.record(Status.PENDING, old))  # its job waits in the stream: fine
    for rec in (settled, queued):
        pub = await queue.publish_record(rec)
        await world.store.update(rec.image_id, job_seq=pub.seq)
    sub = await js.pull_subscribe_bind(durable=world.consumer, stream=world.settings.stream)
    [msg] = await sub.fetch(1, timeout=5)
    assert contract.decode(msg.data, contract.ProcessJob).image_id == settled.image_id
    await msg.ack_sync()
    await sub.unsubscribe()
    stuck = await world.add(world.record(Status.EMBEDDED, ancient))
    unindexed = await world.add(world.record(Status.DONE, ancient))
    await world.store.set_embedding(MODEL, unindexed.image_id, np.array([1, 0, 0, 0], np.float32))
    indexed = await world.add(world.record(Status.DONE, ancient))
    await world.vectors.upsert(MODEL, indexed.image_id, [0.0, 1.0, 0.0, 0.0])
    ghost = uuid.uuid4().hex
    await world.vectors.upsert(MODEL, ghost, [0.0, 0.0, 1.0, 0.0])
    orphans = [object_key(uuid.uuid4().hex) for _ in range(3)]  # over two pages of the listing
    for key in orphans:
        await world.objects.put(key, b"orphan", "image/jpeg")
    dead_upload = object_key(uuid.uuid4().hex)  # a gateway died between the put and the record
    await world.objects.put(dead_upload, b"half", "image/jpeg")
    await world.redis.hset(f"{world.store_prefix}:upload_intents", dead_upload, "dead-gateway")

    reply = await world.reconciler().reconcile(ReconcileRequest(grace_s=0))

    assert reply.repairs == {
        "pending_without_job": 2,
        "stuck": 1,
        "orphan_object": 3,
        "done_without_vector": 1,
        "done_without_labels": 0,  # this version's records: labelled where a classifier could,
        "done_without_derived": 0,  # with thumbnail and copy features,
        "done_without_copy_check": 0,  # and verified
        "vector_without_record": 1,
        "stale_intent": 1,
    }, reply
    # the dead gateway's object went with its intent, before the listing
    assert reply.scanned == {"intents": 1, "records": 6, "vectors": 3, "objects": 9}, reply
    after = {r.image_id: await world.store.get(r.image_id) for r in (lost, settled, queued, stuck)}
    for rec, attempt in [(lost, 0), (settled, 1)]:  # the first job under its own id; a fresh attempt
        latest = after[rec.image_id]
        assert latest is not None and latest.history[-1]["repair"] == "pending_without_job"
        stored = await js.get_msg(world.settings.stream, latest.job_seq)
        job = contract.decode(stored.data or b"", contract.ProcessJob)
        assert (job.image_id, job.attempt, job.cause) == (rec.image_id, attempt, "reconcile")
        assert (stored.headers or {})[contract.MSG_ID_HEADER] == contract.job_msg_id(rec.image_id, attempt)
        assert latest.attempt == attempt
    untouched = after[queued.image_id]
    assert untouched is not None and untouched.history[-1].get("cause") == "upload"
    stuck_now = after[stuck.image_id]
    assert stuck_now is not None and stuck_now.status == Status.ERROR and stuck_now.error is not None
    assert stuck_now.error.code == "stuck"
    assert await world.vectors.present(MODEL, [unindexed.image_id, indexed.image_id, ghost]) == {
        unindexed.image_id,
        indexed.image_id,
    }
    keys = {k for k, _ in (await world.objects.list_page("images/", "", 100))[0]}
    assert keys == {r.object_key for r in (lost, settled, queued, stuck, unindexed, indexed)}
    assert await world.redis.hlen(f"{world.store_prefix}:upload_intents") == 0

    again = await world.reconciler().reconcile(ReconcileRequest(grace_s=0))
    assert sum(again.repairs.values()) == 0, again  # every repair held (the republished jobs are queued)
    with pytest.raises(PermanentError):
        await world.reconciler().reconcile(ReconcileRequest(grace_s=-1))


async def test_one_replica_steps_at_a_time_and_the_next_step_resumes_at_the_stored_cursors(
    world: World,
) -> None:
    for _ in range(5):
        await world.objects.put(object_key(uuid.uuid4().hex), b"orphan", "image/jpeg")
    first, second = world.reconciler(), world.reconciler()
    results = await asyncio.gather(first.step(world.cfg), second.step(world.cfg))
    stepped = [r for r in results if r is not None]
    assert len(stepped) == 1 and stepped[0]["orphan_object"] == 2, results  # one batch of two
    cursors = await world.redis.hgetall(cursors_key(world.store_prefix))
    assert cursors[b"objects"] != b"", cursors  # the walk is half way
    assert await first.step(world.cfg) is None  # not due again within the period

    await world.redis.delete(f"{world.store_prefix}:reconcile:last_step")  # as if a period had passed
    resumed = await second.step(world.cfg)
    assert resumed is not None and resumed["orphan_object"] == 2  # the next two: resumed at the cursor
    await world.redis.delete(f"{world.store_prefix}:reconcile:last_step")
    last = await first.step(world.cfg)
    assert last is not None and last["orphan_object"] == 1
    assert (await world.objects.list_page("images/", "", 100))[0] == []
    cursors = await world.redis.hgetall(cursors_key(world.store_prefix))
    assert cursors[b"objects"] == b"", cursors  # complete: the next round starts over
