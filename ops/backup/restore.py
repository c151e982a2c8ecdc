"""mesh restore DIR: rebuild an empty stack from a backup made by ``mesh backup`` (``ops/backup/backup.py``).

    python -m ops.cli restore DIR [--json]               (also: mesh restore DIR)

Run it on a stack whose servers run (NATS, Redis, the S3 store: ``make run`` starts them, or compose's
``nats``, ``redis``, ``s3`` and ``bootstrap``) before the mesh's own processes start, or with them stopped. The
stack must hold no image: no record in Redis, no original in the bucket, no job in the work stream; the empty
streams and Config DB bucket a fresh stack's start-up made are replaced. In order:

1. the JetStream streams (``ops/backup/streams.py``): jobs with the coordinators' consumer, events, Config DB;
2. the objects, with the content types their records name;
3. the Redis keys (``RESTORE``), then each vector index (its dimension from the manifest) and the records
   index, which RediSearch fills from the restored hashes in the background (queries answer ``503`` until
   then);
4. the job of every image that is not finished and whose job the restored stream does not hold (an upload
   accepted while the backup ran: its record was copied, its job came after the stream's snapshot).

Then start the mesh; ``mesh check`` should be clean once those jobs are done.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nats
import redis.asyncio as aioredis
import structlog

from actors.adapters.job_queue import JobQueue
from actors.adapters.object_store import ORIGINALS_PREFIX, PROBE_KEY, ObjectStore
from actors.adapters.record_index import RecordIndex
from actors.adapters.vector_index.catalog import IndexCatalog
from actors.adapters.workflow_store import WorkflowStore
from actors.contract import TERMINAL, Cause, Status
from actors.settings import Settings
from ops.backup.backup import COPIES_AT_ONCE, Manifest, object_path
from ops.backup.redis_keys import restore_keys
from ops.backup.streams import BackupError, restore_stream

log = structlog.get_logger("backup")


@dataclass
class Restored:
    """What a restore put back."""

    streams: dict[str, int]  # stream -> messages
    keys: int
    objects: int
    images: int
    jobs_published: int
    seconds: float


async def restore(settings: Settings, src: Path) -> Restored:
    """Rebuild the (empty) stack of ``settings`` from the backup in ``src``."""
    started = time.monotonic()
    manifest = Manifest.read(src)
    if manifest.prefix != settings.redis_prefix:
        raise BackupError(
            f"the backup's Redis prefix is {manifest.prefix!r}, this stack's {settings.redis_prefix!r}"
        )
    images = [json.loads(line) for line in (src / "images.jsonl").read_text().splitlines() if line]
    nc = await nats.connect(
        settings.nats_server_url, user="ops", password=settings.nats_password("ops"), max_reconnect_attempts=2
    )
    redis = aioredis.Redis.from_url(settings.redis_server_url)
    try:
        async with ObjectStore(settings) as store:
            await _refuse_unless_empty(redis, store, settings)
            streams = {}
            for name in manifest.streams:
                info = await restore_stream(nc, src / "jetstream", name)
                streams[name] = int(info.get("state", {}).get("messages", 0))
            objects = await _objects(store, src, images)
        keys = await restore_keys(redis, src / "redis.bin")
        async with IndexCatalog.from_settings(settings) as catalog:
            for model, dim in manifest.models.items():
                await catalog.ensure_index(model, dim)
        await RecordIndex(redis, settings.redis_prefix).ensure()
        published = await _jobs(nc, settings, images)
    finally:
        await redis.aclose()
        await nc.close()
    done = Restored(streams, keys, objects, len(images), published, time.monotonic() - started)
    log.info("restore.done", **{k: v for k, v in asdict(done).items() if k != "streams"})
    return done


async def _refuse_unless_empty(redis: aioredis.Redis, store: ObjectStore, s: Settings) -> None:
    async for _ in redis.scan_iter(match=f"{s.redis_prefix}:image:*", count=1000):
        raise BackupError("Redis already holds image records: restore rebuilds an empty stack")
    originals, _ = await store.list_page(ORIGINALS_PREFIX, "", 2)
    if any(key != PROBE_KEY for key, _ in originals):
        raise BackupError(f"the bucket {s.s3_bucket} already holds images: restore rebuilds an empty stack")


async def _objects(store: ObjectStore, src: Path, images: list[dict[str, object]]) -> int:
    gate = asyncio.Semaphore(COPIES_AT_ONCE)

    async def put(key: str, content_type: str) -> None:
        data = await asyncio.to_thread(object_path(src, key).read_bytes)
        async with gate:
            await store.put(key, data, content_type)

    wanted = {k: t for image in images for k, t in dict(image["objects"]).items()}  # type: ignore[call-overload]
    await asyncio.gather(*(put(k, t) for k, t in wanted.items()))
    return len(wanted)


async def _jobs(nc: nats.NATS, s: Settings, images: list[dict[str, object]]) -> int:
    """Publish the job of each unfinished image whose job the restored work stream does not hold."""
    js = nc.jetstream()
    last_seq = int((await js.stream_info(s.stream)).state.last_seq)
    queue, store = JobQueue(js), WorkflowStore(s.redis_server_url, s.redis_prefix)
    published = 0
    try:
        for image in images:
            if Status(str(image["status"])) in TERMINAL:
                continue
            rec = await store.get(str(image["id"]))
            if rec is None or 0 < rec.job_seq <= last_seq:
                continue  # its job is in the restored stream: the coordinators get it there
            sent = await queue.publish_record(rec, cause=Cause.RECONCILE)
            published += not sent.duplicate
    finally:
        await store.close()
    return published
