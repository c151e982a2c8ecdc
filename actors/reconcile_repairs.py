"""The reconciler's repairs: what is done about each anomaly ``reconcile_scan`` found.

Each repair is idempotent (a crash half way, or two passes over the same finding, leave the same end state),
goes through the mesh's own paths (the job queue, the recorder, the indexer service, the object store), is
counted in ``mesh_reconcile_repairs_total{kind}`` and, when the image has a record, written into its history
with cause ``reconcile`` (a note ``{"step": "reconcile", "repair": kind, ...}``, or the ``error`` transition of
a stuck image). A finding that needs no repair after all (the job was in the stream, only its sequence was not
recorded) is not counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np
import structlog
from nats.js import JetStreamContext
from prometheus_client import Counter

from actors.adapters.job_queue import JobQueue, Published, job_for
from actors.contract import Cause, DeadLetter, ErrorInfo, ImageRecord, Status
from actors.reconcile_rules import STUCK_CODE, Kind, Policy, age_s, republish_attempt
from actors.reconcile_scan import Finding
from actors.recorder import Provenance, Recorder
from actors.workflow import VectorIndex, label_scores, metadata_tags

log = structlog.get_logger("reconcile")

REPAIRS = Counter("mesh_reconcile_repairs_total", "Anomalies the reconciler repaired, by kind", ["kind"])


class RepairStore(Protocol):
    async def get(self, image_id: str) -> ImageRecord | None: ...
    async def existing(self, image_ids: list[str]) -> set[str]: ...
    async def update(self, image_id: str, **fields: Any) -> None: ...
    async def get_embedding(self, model: str, image_id: str) -> np.ndarray | None: ...


class Index(VectorIndex, Protocol):
    """The indexer as the pipeline writes to it, plus deletes."""

    async def delete(self, image_id: str, model: str | None = None) -> int: ...


class ObjectDeleter(Protocol):
    async def delete(self, key: str) -> None: ...


class IntentSettler(Protocol):
    async def forget(self, object_key: str) -> None: ...


class CopyQueue(Protocol):
    async def enqueue(self, image_ids: Iterable[str], at: float | None = None) -> int: ...


class Repairer:
    """Carries out one finding's repair; ``RetryableError`` when a dependency is down (nothing half done
    matters: the next pass finds what is left)."""

    def __init__(
        self,
        *,
        store: RepairStore,
        recorder: Recorder,
        queue: JobQueue,
        js: JetStreamContext,
        index: Index,
        objects: ObjectDeleter,
        intents: IntentSettler,
        copies: CopyQueue | None = None,
    ) -> None:
        self.store, self.recorder, self.queue, self.js = store, recorder, queue, js
        self.index, self.objects, self.intents = index, objects, intents
        self.copies = copies

    async def repair(self, f: Finding, policy: Policy) -> bool:
        """Repair ``f``; True when something was repaired (and counted)."""
        if f.kind is Kind.PENDING_WITHOUT_JOB:
            repaired = await self._republish(f)
        elif f.kind is Kind.STUCK:
            repaired = await self._stuck(f, policy)
        elif f.kind is Kind.DONE_WITHOUT_VECTOR:
            repaired = await self._reindex(f)
        elif f.kind in (Kind.DONE_WITHOUT_LABELS, Kind.DONE_WITHOUT_DERIVED):
            repaired = await self._complete(f)
        elif f.kind is Kind.DONE_WITHOUT_COPY_CHECK:
            repaired = await self._queue_copy_check(f)
        elif f.kind is Kind.VECTOR_WITHOUT_RECORD:
            repaired = await self.index.delete(f.image_id, f.model) > 0
        elif f.kind is Kind.ORPHAN_OBJECT:
            repaired = await self._orphan_object(f)
        elif f.kind is Kind.STALE_INTENT:
            repaired = await self._intent(f)
        else:  # check-only kinds (two done entries, a vector indexed twice): reported, never repaired
            return False
        if repaired:
            REPAIRS.labels(f.kind.value).inc()
            log.info("reconcile.repaired", kind=f.kind.value, image_id=f.image_id, model=f.model, key=f.key)
        return repaired

    async def _unchanged(self, rec: ImageRecord) -> bool:
        """The record is as the scan saw it (a job that moved it meanwhile is alive after all)."""
        now = await self.store.get(rec.image_id)
        return now is not None and now.status == rec.status and now.updated_at == rec.updated_at

    async def _note(self, image_id: str, kind: Kind, attempt: int, **detail: Any) -> None:
        why = Provenance(Cause.RECONCILE, attempt)
        await self.recorder.note(image_id, "reconcile", why=why, repair=kind.value, **detail)

    async def _republish(self, f: Finding) -> bool:
        """A pending record whose job is not in the stream: publish it again, under the same de-duplication
        id (or the next attempt's when the stream settled the first job, or still remembers its id)."""
        rec = _record(f)
        assert f.job is not None, f
        if not await self._unchanged(rec):
            return False
        attempt = republish_attempt(rec, f.job)
        pub = await self._publish(rec, attempt)
        if pub.duplicate:
            # Temporal: the image's workflow is open (say, waiting for a worker): its job is there
            if pub.seq == 0:
                return False
            if pub.seq != rec.job_seq:  # the job is there: only its sequence was never recorded
                await self.store.update(rec.image_id, job_seq=pub.seq)
                return False
            attempt = rec.attempt + 1  # the id is remembered but the job is gone: a fresh attempt
            pub = await self._publish(rec, attempt)
        await self.store.update(rec.image_id, job_seq=pub.seq)
        await self._note(rec.image_id, Kind.PENDING_WITHOUT_JOB, attempt, job_seq=pub.seq)
        return True

    async def _publish(self, rec: ImageRecord, attempt: int) -> Published:
        if attempt != rec.attempt:  # like a replay: the record's attempt first, so the job is not skipped
            await self.store.update(rec.image_id, attempt=attempt)
        return await self.queue.publish_record(rec, attempt=attempt, cause=Cause.RECONCILE)

    async def _stuck(self, f: Finding, policy: Policy) -> bool:
        """A job that can no longer be running: dead-letter it (as the coordinator does on its last
        delivery) and record ``error`` ``stuck``."""
        rec = _record(f)
        if not await self._unchanged(rec):
            return False
        reason = (
            f"{rec.status.value} for {age_s(rec, time.time()):.0f} s, longer than the delivery policy lets a "
            f"job run ({policy.stuck_after_s:.0f} s): its last delivery was lost"
        )
        job = job_for(rec, cause=Cause.RECONCILE)
        dead = DeadLetter(job=job, code=STUCK_CODE, reason=reason, deliveries=0)
        await self.queue.dead_letter(dead)  # RetryableError when not stored: the next pass tries again
        await self.recorder.transition(
            rec.image_id,
            Status.ERROR,
            trace_id=rec.trace_id,
            why=Provenance(Cause.RECONCILE, rec.attempt),
            error=ErrorInfo(code=STUCK_CODE, message=reason),
        )
        return True

    async def _reindex(self, f: Finding) -> bool:
        """A done image without its vector: upsert the stored embedding, or publish a re-embed job."""
        rec = _record(f)
        vector = await self.store.get_embedding(f.model, rec.image_id)
        if vector is not None:
            tags, labels = metadata_tags(rec.metadata), label_scores(rec.labels)
            await self.index.upsert(f.model, rec.image_id, vector, tags, trace_id=rec.trace_id, labels=labels)
            how = "upsert"
        else:  # the pipeline's re-embed path: vectors added, the record left as it is
            msg_id = f"reconcile:{f.model}:{rec.image_id}:{int(time.time())}"
            await self.queue.publish_record(rec, models=[f.model], msg_id=msg_id, cause=Cause.RECONCILE)
            how = "reembed"
        await self._note(rec.image_id, Kind.DONE_WITHOUT_VECTOR, rec.attempt, model=f.model, how=how)
        return True

    async def _complete(self, f: Finding) -> bool:
        """A done image without what a newer version makes for every image (labels, a thumbnail): a re-embed
        job in the active model; the pipeline's re-embed path makes what the record lacks."""
        rec = _record(f)
        if not await self._unchanged(rec):
            return False
        what = "labels" if f.kind is Kind.DONE_WITHOUT_LABELS else "derived"
        msg_id = f"reconcile:{what}:{f.model}:{rec.image_id}:{int(time.time())}"
        await self.queue.publish_record(rec, models=[f.model], msg_id=msg_id, cause=Cause.RECONCILE)
        await self._note(rec.image_id, f.kind, rec.attempt, model=f.model, how="reembed")
        return True

    async def _queue_copy_check(self, f: Finding) -> bool:
        """A done image whose look-alikes this version never verified: into the copy checker's queue."""
        if self.copies is None or not await self.copies.enqueue([f.image_id]):
            return False  # no checker here, or queued already
        rec = _record(f)
        await self._note(rec.image_id, Kind.DONE_WITHOUT_COPY_CHECK, rec.attempt, how="queued")
        return True

    async def _orphan_object(self, f: Finding) -> bool:
        if await self.store.existing([f.image_id]):  # recorded since the scan: not an orphan
            return False
        await self.objects.delete(f.key)
        return True

    async def _intent(self, f: Finding) -> bool:
        """Settle an intent like the gateway's sweep: its object goes unless the image is recorded."""
        recorded = f.recorded or bool(await self.store.existing([f.image_id]))
        if not recorded:
            await self.objects.delete(f.key)
        await self.intents.forget(f.key)
        if recorded:
            rec = await self.store.get(f.image_id)
            if rec is not None:
                await self._note(f.image_id, Kind.STALE_INTENT, rec.attempt, key=f.key)
        return True


def _record(f: Finding) -> ImageRecord:
    assert f.record is not None, f
    return f.record


__all__ = ["REPAIRS", "Repairer"]
