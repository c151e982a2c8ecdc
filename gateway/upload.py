"""Accepting one upload: validate, store the object, write the record, publish the durable job.

The order, and why:
1. Validate everything in memory first (bytes, type, pixels, metadata): bad input stores nothing.
2. Identical bytes already known: answer with the existing image (and re-publish its job if it is still
   pending: the job's de-duplication id makes that a no-op unless a crash lost the first publish).
3. Put the object under a key we generate. If this fails nothing else exists yet. (An upload intent noted
   before the put lets a sweep remove the object if this process dies before step 4: gateway/intents.py.)
4. Create the ``pending`` record and claim the sha256, atomically (a concurrent upload of the same bytes loses
   the claim, removes its object and answers ``duplicate``).
5. Publish the ``pending`` event, then the job (``actors/adapters/job_queue.py``) and wait for JetStream's
   ack: the event first, so that a coordinator's ``processing`` follows it. If the job fails, undo 4 and 3
   (and publish ``deleted``), so a retry of the same bytes is not mistaken for a duplicate, and answer 503.
   The ack's stream sequence goes into the record (``job_seq``: the reconciler and ``mesh check`` find the
   job by it).
So an accepted upload (2xx) always has its object and its durable job, and no job exists without its object.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.client import Client

from actors.adapters.events import Events
from actors.adapters.job_queue import JobQueue, job_for
from actors.adapters.object_store import ObjectStore, object_key
from actors.adapters.workflow_store import WorkflowStore
from actors.contract import ImageEvent, ImageRecord, Status
from actors.errors import RetryableError
from gateway.intents import UploadIntents
from gateway.validation import ImageInfo, sha256_hex

log = structlog.get_logger("gateway.upload")


@dataclass(frozen=True)
class Accepted:
    image_id: str
    status: Status
    sha256: str
    duplicate: bool


def new_image_id() -> str:
    return uuid.uuid4().hex


MAX_FILENAME_CHARS = 255


def clean_filename(name: str | None) -> str:
    """The uploaded file's name as the library shows it: its last path part, printable characters only, at
    most ``MAX_FILENAME_CHARS``. Shown and listed, never part of a key or a path."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch for ch in base if ch.isprintable()).strip()[:MAX_FILENAME_CHARS]


async def accept_upload(
    *,
    data: bytes,
    info: ImageInfo,
    metadata: dict[str, Any],
    store: WorkflowStore,
    objects: ObjectStore,
    nc: Client,
    jobs: JobQueue,
    events: Events,
    intents: UploadIntents,
    filename: str = "",
) -> Accepted:
    """Store a validated image and queue its processing (see the module docstring for the order).

    ``nc`` is only asked whether it is connected: without NATS no job can be stored, so nothing is written.
    """
    sha = sha256_hex(data)
    if not nc.is_connected:
        raise RetryableError("job queue unavailable: not connected to NATS")

    existing = await _existing(store, jobs, sha)
    if existing is not None:
        return existing

    image_id = new_image_id()
    trace_id = uuid.uuid4().hex
    now = time.time()
    rec = ImageRecord(
        image_id=image_id,
        status=Status.PENDING,
        sha256=sha,
        object_key=object_key(image_id),
        content_type=info.content_type,
        size_bytes=len(data),
        width=info.width,
        height=info.height,
        metadata=metadata,
        filename=clean_filename(filename),
        created_at=now,
        updated_at=now,
        trace_id=trace_id,
    )
    log_ = log.bind(image_id=image_id, trace_id=trace_id)

    await intents.begin(rec.object_key)  # if this process dies before the record exists, a sweep removes it
    try:
        await objects.put(rec.object_key, data, info.content_type)
        owner = await store.create(rec)
    except RetryableError:
        await _forget_object(objects, rec.object_key)
        await intents.end(rec.object_key)
        raise
    await intents.end(rec.object_key)
    if owner is not None:  # lost the race to a concurrent upload of the same bytes
        await _forget_object(objects, rec.object_key)
        existing = await _existing(store, jobs, sha)
        if existing is not None:
            return existing
        raise RetryableError("concurrent upload of the same bytes did not finish; retry")

    # the pending event goes out before the job, on the connection the job then takes: a coordinator's
    # processing event can only follow it (a subscriber sees the states in order)
    await events.publish(ImageEvent(image_id=image_id, status=Status.PENDING, at=now, trace_id=trace_id))
    try:
        pub = await jobs.publish(job_for(rec))
    except RetryableError:
        log_.warning("upload.rolled_back", reason="job not stored")
        with contextlib.suppress(RetryableError):
            await store.delete(image_id, sha)
        await _forget_object(objects, rec.object_key)
        await events.publish(ImageEvent(image_id=image_id, status=Status.DELETED, at=now, trace_id=trace_id))
        raise
    await _note_job_seq(store, image_id, pub.seq)
    log_.info("upload.accepted", size_bytes=len(data), content_type=info.content_type)
    return Accepted(image_id=image_id, status=Status.PENDING, sha256=sha, duplicate=False)


async def _existing(store: WorkflowStore, jobs: JobQueue, sha: str) -> Accepted | None:
    owner = await store.owner_of(sha)
    if owner is None:
        return None
    rec = await store.get(owner)
    if rec is None:  # a claim without its record: an interrupted delete; the new upload takes over
        return None
    if rec.status == Status.PENDING:
        # heals a gateway crash between the record and the publish; a no-op when the job is stored
        pub = await jobs.publish(job_for(rec))
        if pub.seq != rec.job_seq:
            await _note_job_seq(store, rec.image_id, pub.seq)
    return Accepted(image_id=rec.image_id, status=rec.status, sha256=sha, duplicate=True)


async def _note_job_seq(store: WorkflowStore, image_id: str, seq: int) -> None:
    """Keep the job's stream sequence in the record. The upload stands without it (the job is stored): the
    reconciler, finding the record pending without it, publishes the job again under the same de-duplication
    id, and JetStream's answer gives it the sequence."""
    try:
        await store.update(image_id, job_seq=seq)
    except RetryableError as e:
        log.warning("upload.job_seq_not_recorded", image_id=image_id, error=str(e))


async def _forget_object(objects: ObjectStore, key: str) -> None:
    try:
        await objects.delete(key)
    except RetryableError as e:
        log.warning("upload.orphan_object", key=key, error=str(e))
