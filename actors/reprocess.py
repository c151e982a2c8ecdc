"""The operators' replay (``coordinator.reprocess``): publish fresh jobs for images, or for every errored one.

Each replayed image gets the next attempt number (part of the job's ``Nats-Msg-Id``, so JetStream does not
drop it as a repeat of the first job) and its job goes through the one job-queue adapter. An errored image is
put back to ``pending`` (error cleared) before its job is published, so a client polling it sees the replay at
once; if the job could not be stored, the error is put back and the call fails (503): nothing was queued.
"""

from __future__ import annotations

from typing import Any, Protocol

import structlog

from actors.adapters.job_queue import JobQueue
from actors.contract import Cause, ImageRecord, ReprocessReply, ReprocessRequest, Status
from actors.errors import RetryableError
from actors.recorder import Provenance, Recorder

log = structlog.get_logger("coordinator")


class ReplayStore(Protocol):
    async def get(self, image_id: str) -> ImageRecord | None: ...
    async def ids_in_status(self, status: Status, limit: int = ...) -> list[str]: ...
    async def update(self, image_id: str, **fields: Any) -> None: ...


class Replay:
    """``coordinator.reprocess``: what ``python -m ops.replay`` and ``mesh replay`` call."""

    def __init__(self, store: ReplayStore, recorder: Recorder, queue: JobQueue) -> None:
        self.store, self.recorder, self.queue = store, recorder, queue

    async def reprocess(self, req: ReprocessRequest) -> ReprocessReply:
        """Publish fresh jobs for these images (or every errored one); unknown ids are left out of the reply."""
        ids = list(req.image_ids)
        if req.all_errored:
            ids += await self.store.ids_in_status(Status.ERROR)
        requeued: list[str] = []
        for image_id in dict.fromkeys(ids):
            rec = await self.store.get(image_id)
            if rec is not None:
                await self._replay(rec)
                requeued.append(image_id)
        log.info("reprocess.requeued", count=len(requeued))
        return ReprocessReply(requeued=requeued)

    async def _replay(self, rec: ImageRecord) -> None:
        attempt = rec.attempt + 1
        why = Provenance(Cause.REPLAY, attempt)
        await self.recorder.update(rec.image_id, attempt=attempt)
        was_error = rec.status == Status.ERROR
        if was_error:
            # queued again: a client polling the image sees the replay at once, not the old error
            await self.recorder.transition(
                rec.image_id, Status.PENDING, trace_id=rec.trace_id, why=why, error=None
            )
        try:
            pub = await self.queue.publish_record(rec, attempt=attempt, cause=Cause.REPLAY)
        except RetryableError:
            if was_error:  # nothing was queued: the error stands, the operator can replay again
                await self.recorder.transition(
                    rec.image_id, Status.ERROR, trace_id=rec.trace_id, why=why, error=rec.error
                )
            raise
        await self.recorder.update(rec.image_id, job_seq=pub.seq)  # where the reconciler looks the job up
