"""mesh backup DIR: a consistent copy of a running mesh, for ``mesh restore DIR`` (``ops/backup/restore.py``).

    python -m ops.cli backup DIR [--json]                (also: mesh backup DIR)

What it copies, in this order, and why that order makes the copy consistent:

1. JetStream (``ops/backup/streams.py``, the snapshot API): the work stream with the coordinators' consumer and
   its acknowledgements, the events stream, and the Config DB's bucket (the stream ``KV_<bucket>``).
2. Redis (``ops/backup/redis_keys.py``): each image's keys (record, history, sha claim, copy verdicts,
   embeddings, vectors) dumped at one instant per batch, so a ``done`` record comes with its vectors.
3. The object store: right after each batch of images is dumped, the objects their records name (original,
   thumbnail, copy features) are copied. An image whose original is gone by then was deleted while the backup
   ran: it is left out whole (``dropped``), so every record in the backup has its objects.

An upload is accepted once its object, its record and its job are stored, in that order. An upload whose
record the Redis pass saw is in the backup with its object (stored before the record); one it did not see is
absent. Its job may be missing from the stream (snapshotted first): ``mesh restore`` publishes again the job of
every image that is not finished and has none in the restored stream, so the restored mesh finishes it.

The folder: ``manifest.json`` (``Manifest``), ``images.jsonl`` (one line per image: id, status, model,
objects), ``redis.bin``, ``jetstream/<stream>.tar.s2`` and ``.json``, ``objects/<object key>``. Runs as an
operator with the stack's ``MESH_*`` settings (NATS ``ops``, the operators' Redis user and S3 identity).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nats
import redis.asyncio as aioredis
import structlog
from nats.aio.client import Client

from actors.adapters.object_store import ObjectMissing, ObjectStore
from actors.adapters.vector_index.catalog import IndexCatalog
from actors.contract import LAYOUT, Status
from actors.settings import Settings, package_version
from ops.backup.redis_keys import FrameWriter, ImageDump, dump_images, dump_others
from ops.backup.streams import BackupError, snapshot_stream

log = structlog.get_logger("backup")

FORMAT = 1  # of the folder; ``mesh restore`` refuses another
COPIES_AT_ONCE = 16


@dataclass
class Manifest:
    """What a backup holds and how it was made (``manifest.json``)."""

    format: int = FORMAT
    release: str = ""
    layout: int = LAYOUT
    prefix: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    streams: dict[str, int] = field(default_factory=dict)  # stream -> messages
    models: dict[str, int] = field(default_factory=dict)  # vector index -> dimension
    images: int = 0
    done: int = 0
    dropped: int = 0  # deleted while the backup ran
    done_without_vector: int = 0  # an anomaly of the source (``mesh check`` reports it too)
    keys: int = 0
    objects: int = 0
    object_bytes: int = 0

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / "manifest.json"
        if not path.is_file():
            raise BackupError(f"{folder} is no backup: it has no manifest.json")
        m = cls(**json.loads(path.read_text()))
        if m.format != FORMAT:
            raise BackupError(f"{folder}: backup format {m.format}, this release reads format {FORMAT}")
        return m


def stream_names(s: Settings) -> list[str]:
    """The JetStream streams a backup holds: work, events, the Config DB's bucket."""
    return [s.stream, s.events_stream, f"KV_{s.config_bucket}"]


def object_path(folder: Path, key: str) -> Path:
    """Where an object's bytes lie in a backup; a key that would leave ``objects/`` is refused."""
    root = (folder / "objects").resolve()
    path = (root / key).resolve()
    if not path.is_relative_to(root) or path == root:
        raise BackupError(f"object key {key!r} leaves the backup's objects/ folder")
    return path


Progress = Callable[[str], Awaitable[None]]


async def backup(settings: Settings, dest: Path, progress: Progress | None = None) -> Manifest:
    """Write a backup of the stack of ``settings`` into ``dest`` (absent or empty); ``progress`` is awaited
    with the name of each part once it is copied (``jetstream``, ``redis``: the images and their objects)."""
    _new_folder(dest)
    m = Manifest(release=package_version(), prefix=settings.redis_prefix, started_at=time.time())
    nc = await nats.connect(
        settings.nats_server_url, user="ops", password=settings.nats_password("ops"), max_reconnect_attempts=2
    )
    redis = aioredis.Redis.from_url(settings.redis_server_url)
    try:
        await _streams(nc, settings, dest, m)
        if progress:
            await progress("jetstream")
        async with IndexCatalog.from_settings(settings) as catalog, ObjectStore(settings) as store:
            for model in await catalog.models():
                m.models[model] = int((await catalog.stats(model)).dim or 0)
            await _images(redis, store, settings.redis_prefix, dest, m)
        if progress:
            await progress("redis")
    finally:
        await redis.aclose()
        await nc.close()
    m.finished_at = time.time()
    (dest / "manifest.json").write_text(json.dumps(asdict(m), indent=2, sort_keys=True))
    log.info("backup.done", **{k: v for k, v in asdict(m).items() if k not in ("streams", "models")})
    return m


def _new_folder(dest: Path) -> None:
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty: a backup goes into a new folder")
    dest.mkdir(parents=True, exist_ok=True)


async def _streams(nc: Client, s: Settings, dest: Path, m: Manifest) -> None:
    for name in stream_names(s):
        snap = await snapshot_stream(nc, name, dest / "jetstream")
        m.streams[name] = snap.messages


async def _images(redis: aioredis.Redis, store: ObjectStore, prefix: str, dest: Path, m: Manifest) -> None:
    """Dump the images batch by batch, each batch's objects copied right after it; then the other keys."""
    batch: list[ImageDump] = []
    with (dest / "redis.bin").open("wb") as keys_file, (dest / "images.jsonl").open("w") as images_file:
        frames = FrameWriter(keys_file)

        async def flush() -> None:
            for image in await _with_objects(store, dest, batch, m):
                for key, payload in image.keys:
                    frames.write(key, payload)
                line = {
                    "id": image.image_id,
                    "status": image.status,
                    "model": image.model,
                    "objects": image.objects,
                }
                images_file.write(json.dumps(line) + "\n")
                _count(image, prefix, m)
            batch.clear()

        async for image in dump_images(redis, prefix, list(m.models)):
            batch.append(image)
            if len(batch) >= 50:
                await flush()
        await flush()
        for key, payload in await dump_others(redis, prefix):
            frames.write(key, payload)
        m.keys = frames.count


def _count(image: ImageDump, prefix: str, m: Manifest) -> None:
    m.images += 1
    if image.status == Status.DONE.value:
        m.done += 1
        if image.model and not image.has_key(f"{prefix}:vec:{image.model}:{image.image_id}"):
            m.done_without_vector += 1


async def _with_objects(
    store: ObjectStore, dest: Path, images: list[ImageDump], m: Manifest
) -> list[ImageDump]:
    """Copy each image's objects; the images whose objects were all there (the others were deleted)."""
    gate = asyncio.Semaphore(COPIES_AT_ONCE)

    async def copy(key: str) -> int | None:
        async with gate:
            try:
                data = await store.get(key)
            except ObjectMissing:
                return None
        path = object_path(dest, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(path.write_bytes, data)
        return len(data)

    kept = []
    for image, sizes in zip(
        images,
        await asyncio.gather(*(asyncio.gather(*(copy(k) for k in i.objects)) for i in images)),
        strict=True,
    ):
        if any(size is None for size in sizes):
            m.dropped += 1
            for key in image.objects:  # what was copied of it goes too
                object_path(dest, key).unlink(missing_ok=True)
            log.info("backup.dropped", image_id=image.image_id, reason="deleted while the backup ran")
            continue
        m.objects += len(sizes)
        m.object_bytes += sum(s or 0 for s in sizes)
        kept.append(image)
    return kept
