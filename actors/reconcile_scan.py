"""Finding anomalies, read only: one bounded, resumable batch of one source at a time.

Four sources, each walked with a cursor that the caller keeps (the reconciler in Redis, ``mesh check`` in
memory), so a batch costs the same however large the library:

| source | walk | anomalies (``reconcile_rules.Kind``) |
| --- | --- | --- |
| ``records`` | ``SCAN`` of the records | pending without job, stuck, done without vector, labels, thumbnail or copy check, two ``done`` from one delivery |
| ``vectors`` | ``SCAN`` of every model's vectors | vector without record (and the documents, for "indexed twice") |
| ``objects`` | ``ListObjectsV2`` pages of the originals | object without record or intent |
| ``intents`` | ``HSCAN`` of the upload intents | stale intent |

The decisions are ``reconcile_rules``'; this module only gathers the facts they need (the stream's job at a
record's ``job_seq``, the consumer's ack floor, which records, vectors and intents exist).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from actors import contract
from actors.adapters.object_store import ORIGINALS_PREFIX
from actors.adapters.upload_intents import image_id_of
from actors.contract import ImageRecord, ProcessJob
from actors.errors import RetryableError
from actors.reconcile_rules import (
    ConsumerFacts,
    JobState,
    Kind,
    Policy,
    duplicate_done,
    is_orphan_object,
    is_stale_intent,
    job_state,
    needs_job_lookup,
    needs_vector_lookup,
    record_kind,
)

NATS_ERRORS = (nats.errors.Error, OSError)
# repaired in the active model
_ACTIVE_MODEL_KINDS = (Kind.DONE_WITHOUT_VECTOR, Kind.DONE_WITHOUT_LABELS, Kind.DONE_WITHOUT_DERIVED)


class Source(enum.StrEnum):
    INTENTS = "intents"  # before objects: an intent's object is settled with the intent
    RECORDS = "records"
    VECTORS = "vectors"
    OBJECTS = "objects"


START = ""  # every cursor's beginning, and its value once a walk is complete


@dataclass(frozen=True)
class Finding:
    """One anomaly: what it is and what its repair needs."""

    kind: Kind
    image_id: str = ""
    record: ImageRecord | None = None
    job: JobState | None = None
    model: str = ""  # vectors: the index it is in
    key: str = ""  # objects and intents: the object key
    recorded: bool = False  # intents: the image has a record


@dataclass
class Batch:
    """What one batch of a source found; ``cursor`` resumes the walk (``START``: it is complete)."""

    cursor: str
    scanned: int = 0
    findings: list[Finding] = field(default_factory=list)
    # vectors: documents whose key names another image than the one they hold: (model, image id held)
    strays: list[tuple[str, str]] = field(default_factory=list)


class Records(Protocol):
    async def scan_ids(self, cursor: int, count: int) -> tuple[int, list[str]]: ...
    async def get(self, image_id: str) -> ImageRecord | None: ...
    async def existing(self, image_ids: list[str]) -> set[str]: ...


class Vectors(Protocol):
    async def present(self, model: str, image_ids: list[str]) -> set[str]: ...
    async def scan_docs(self, cursor: int, count: int) -> tuple[int, list[tuple[str, str, str]]]: ...


class Objects(Protocol):
    async def list_page(
        self, prefix: str, token: str, max_keys: int
    ) -> tuple[list[tuple[str, float]], str]: ...


class Intents(Protocol):
    async def page(self, cursor: int, count: int) -> tuple[int, dict[str, str]]: ...
    async def owners(self, keys: list[str]) -> dict[str, str]: ...
    async def alive(self, owners: list[str]) -> set[str]: ...


class StreamJobs:
    """The work stream and the coordinators' consumer, read only: the consumer's state, the job at a sequence."""

    def __init__(self, js: JetStreamContext, stream: str, consumer: str) -> None:
        self.js, self.stream, self.consumer = js, stream, consumer

    async def facts(self) -> ConsumerFacts:
        """The consumer's ack floor, delivered sequence and policy (defaults while it does not exist yet)."""
        try:
            info = await self.js.consumer_info(self.stream, self.consumer)
        except NotFoundError:
            return ConsumerFacts()
        except NATS_ERRORS as e:
            raise RetryableError(f"jetstream consumer info failed: {e}") from e
        return ConsumerFacts(
            ack_floor=int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0,
            delivered=int(info.delivered.stream_seq or 0) if info.delivered else 0,
            ack_wait_s=float(info.config.ack_wait or 30.0),
            max_deliver=int(info.config.max_deliver or 0),
        )

    async def image_of(self, seq: int) -> str | None:
        """The image of the processing job stored at ``seq``; None when there is none (or another message)."""
        if seq <= 0:
            return None
        try:
            msg = await self.js.get_msg(self.stream, seq)
        except NotFoundError:
            return None
        except NATS_ERRORS as e:
            raise RetryableError(f"jetstream get of job {seq} failed: {e}") from e
        if msg.subject != contract.JOBS_SUBJECT or not msg.data:
            return None
        try:
            return contract.decode(msg.data, ProcessJob).image_id
        except msgspec.DecodeError:  # not a job (someone else's message on the subject)
            return None


class Inspector:
    """One batch of one source at a time; read only."""

    def __init__(
        self, *, records: Records, vectors: Vectors, objects: Objects, intents: Intents, jobs: StreamJobs
    ) -> None:
        self.records, self.vectors, self.objects = records, vectors, objects
        self.intents, self.jobs = intents, jobs

    async def batch(
        self, source: Source, cursor: str, count: int, policy: Policy, consumer: ConsumerFacts, now: float
    ) -> Batch:
        if source is Source.RECORDS:
            return await self.record_batch(cursor, count, policy, consumer, now)
        if source is Source.VECTORS:
            return await self.vector_batch(cursor, count)
        if source is Source.OBJECTS:
            return await self.object_batch(cursor, count, policy, now)
        return await self.intent_batch(cursor, count)

    async def record_batch(
        self, cursor: str, count: int, policy: Policy, consumer: ConsumerFacts, now: float
    ) -> Batch:
        nxt, ids = await self.records.scan_ids(int(cursor or 0), count)
        recs = [r for r in [await self.records.get(i) for i in dict.fromkeys(ids)] if r is not None]
        batch = Batch(cursor=_cursor(nxt), scanned=len(recs))
        done = [r.image_id for r in recs if needs_vector_lookup(r, now, policy)]
        with_vector = await self.vectors.present(policy.active_model, done) if done else set()
        for rec in recs:
            job = None
            if needs_job_lookup(rec, now, policy):
                job = job_state(rec.image_id, rec.job_seq, await self.jobs.image_of(rec.job_seq), consumer)
            kind = record_kind(
                rec,
                now,
                policy,
                job=job,
                job_delivered=0 < rec.job_seq <= consumer.delivered,
                has_vector=(rec.image_id in with_vector) if rec.image_id in done else None,
            )
            if kind is not None:
                model = policy.active_model if kind in _ACTIVE_MODEL_KINDS else ""
                batch.findings.append(Finding(kind, rec.image_id, record=rec, job=job, model=model))
            if duplicate_done(rec.history):
                batch.findings.append(Finding(Kind.DUPLICATE_DONE, rec.image_id, record=rec))
        return batch

    async def vector_batch(self, cursor: str, count: int) -> Batch:
        nxt, docs = await self.vectors.scan_docs(int(cursor or 0), count)
        recorded = await self.records.existing(sorted({image_id for _, image_id, _ in docs}))
        strays = [(m, held) for m, image_id, held in docs if held != image_id]
        batch = Batch(cursor=_cursor(nxt), scanned=len(docs), strays=strays)
        for model, image_id, _ in docs:
            if image_id not in recorded:
                batch.findings.append(Finding(Kind.VECTOR_WITHOUT_RECORD, image_id, model=model))
        return batch

    async def object_batch(self, cursor: str, count: int, policy: Policy, now: float) -> Batch:
        items, nxt = await self.objects.list_page(ORIGINALS_PREFIX, cursor, count)
        recorded = await self.records.existing(sorted({image_id_of(k) for k, _ in items}))
        unrecorded = [k for k, _ in items if image_id_of(k) not in recorded]
        intents = await self.intents.owners(unrecorded)
        batch = Batch(cursor=nxt, scanned=len(items))
        for key, modified in items:
            image_id = image_id_of(key)
            orphan = is_orphan_object(
                modified, now, policy.grace_s, recorded=image_id in recorded, has_intent=key in intents
            )
            if orphan:
                batch.findings.append(Finding(Kind.ORPHAN_OBJECT, image_id, key=key))
        return batch

    async def intent_batch(self, cursor: str, count: int) -> Batch:
        nxt, intents = await self.intents.page(int(cursor or 0), count)
        alive = await self.intents.alive(sorted(set(intents.values())))
        recorded = await self.records.existing(sorted({image_id_of(k) for k in intents}))
        batch = Batch(cursor=_cursor(nxt), scanned=len(intents))
        for key, owner in intents.items():
            image_id = image_id_of(key)
            if is_stale_intent(owner_alive=owner in alive, recorded=image_id in recorded):
                finding = Finding(Kind.STALE_INTENT, image_id, key=key, recorded=image_id in recorded)
                batch.findings.append(finding)
        return batch


def _cursor(redis_cursor: int) -> str:
    """A Redis SCAN cursor as a stored cursor: 0 (the walk is complete) is ``START``."""
    return START if redis_cursor == 0 else str(redis_cursor)


__all__ = ["START", "Batch", "Finding", "Inspector", "Source", "StreamJobs"]
