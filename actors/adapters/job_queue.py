"""The durable job queue: a workflow record becomes a ``ProcessJob``, published to JetStream under a
de-duplication id (``Nats-Msg-Id``) and acknowledged before the caller goes on.

Every publisher of work uses this one adapter: the gateway (a new upload, or healing a pending record), the
coordinator's replay, and the model switch's background re-embeds. A publish that JetStream did not acknowledge
raises ``RetryableError``: the job was not stored, whatever the reason, and the caller decides what to undo.
"""

from __future__ import annotations

from collections.abc import Sequence

from nats.js import JetStreamContext

from actors import contract
from actors.contract import ImageRecord, ProcessJob
from actors.errors import RetryableError

PUBLISH_TIMEOUT_S = 5.0


def job_for(rec: ImageRecord, *, attempt: int | None = None, models: Sequence[str] = ()) -> ProcessJob:
    """The job that processes this record; ``attempt`` above the record's is a replay, ``models`` a re-embed."""
    return ProcessJob(
        image_id=rec.image_id,
        object_key=rec.object_key,
        sha256=rec.sha256,
        trace_id=rec.trace_id,
        attempt=rec.attempt if attempt is None else attempt,
        models=list(models),
    )


class JobQueue:
    """Publishes ``ProcessJob``s on ``contract.JOBS_SUBJECT`` and waits for JetStream's acknowledgement."""

    def __init__(self, js: JetStreamContext, *, timeout_s: float = PUBLISH_TIMEOUT_S) -> None:
        self.js, self.timeout_s = js, timeout_s

    async def publish(self, job: ProcessJob, *, msg_id: str | None = None) -> None:
        """Store ``job`` durably. ``msg_id`` defaults to one per (image, attempt), so a repeated publish of the
        same job inside the stream's duplicate window is dropped by JetStream, not processed twice."""
        headers = {
            contract.MSG_ID_HEADER: msg_id or contract.job_msg_id(job.image_id, job.attempt),
            contract.TRACE_HEADER: job.trace_id,
        }
        try:
            await self.js.publish(
                contract.JOBS_SUBJECT, contract.encode(job), timeout=self.timeout_s, headers=headers
            )
        except Exception as e:  # broad on purpose: no acknowledgement means not stored, whatever the reason
            raise RetryableError(f"job queue unavailable: {type(e).__name__}: {e}") from e

    async def publish_record(
        self,
        rec: ImageRecord,
        *,
        attempt: int | None = None,
        models: Sequence[str] = (),
        msg_id: str | None = None,
    ) -> ProcessJob:
        """Build the record's job (see ``job_for``), publish it, return it."""
        job = job_for(rec, attempt=attempt, models=models)
        await self.publish(job, msg_id=msg_id)
        return job
