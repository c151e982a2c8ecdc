"""The durable job queue: a workflow record becomes a ``ProcessJob``, published to JetStream under a
de-duplication id (``Nats-Msg-Id``) and acknowledged before the caller goes on.

Every publisher of work uses this one adapter: the gateway (a new upload, or healing a pending record), the
coordinator's replay, the model switch's background re-embeds and the reconciler; and every dead letter (the
coordinator giving a job up, the reconciler settling a stuck one) goes through ``dead_letter``. A publish that JetStream did not acknowledge
raises ``RetryableError``: the job was not stored, whatever the reason, and the caller decides what to undo.
A publish returns where JetStream stored the job (``Published``): its stream sequence, kept in the record as
``job_seq`` (the reconciler and ``mesh check`` look the job up by it), and whether it was a dropped repeat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nats.js import JetStreamContext

from actors import contract
from actors.contract import Cause, DeadLetter, ImageRecord, ProcessJob
from actors.errors import RetryableError

PUBLISH_TIMEOUT_S = 5.0


def job_for(
    rec: ImageRecord,
    *,
    attempt: int | None = None,
    models: Sequence[str] = (),
    cause: Cause = Cause.UPLOAD,
) -> ProcessJob:
    """The job that processes this record; ``attempt`` above the record's is a replay, ``models`` a re-embed;
    ``cause`` says who publishes it (the history entries of its processing carry it)."""
    return ProcessJob(
        image_id=rec.image_id,
        object_key=rec.object_key,
        sha256=rec.sha256,
        trace_id=rec.trace_id,
        attempt=rec.attempt if attempt is None else attempt,
        models=list(models),
        cause=cause.value,
        layout=contract.LAYOUT,
    )


@dataclass(frozen=True)
class Published:
    """A job JetStream acknowledged: its stream sequence, and ``duplicate`` when JetStream dropped it as a
    repeat of a job it already holds under the same ``Nats-Msg-Id`` (``seq`` is then that job's)."""

    job: ProcessJob
    seq: int
    duplicate: bool = False


class JobQueue:
    """Publishes ``ProcessJob``s on ``contract.JOBS_SUBJECT`` and waits for JetStream's acknowledgement."""

    def __init__(self, js: JetStreamContext, *, timeout_s: float = PUBLISH_TIMEOUT_S) -> None:
        self.js, self.timeout_s = js, timeout_s

    async def publish(self, job: ProcessJob, *, msg_id: str | None = None) -> Published:
        """Store ``job`` durably. ``msg_id`` defaults to one per (image, attempt), so a repeated publish of the
        same job inside the stream's duplicate window is dropped by JetStream, not processed twice."""
        headers = {
            contract.MSG_ID_HEADER: msg_id or contract.job_msg_id(job.image_id, job.attempt),
            contract.TRACE_HEADER: job.trace_id,
        }
        try:
            ack = await self.js.publish(
                contract.JOBS_SUBJECT, contract.encode(job), timeout=self.timeout_s, headers=headers
            )
        except Exception as e:  # broad on purpose: no acknowledgement means not stored, whatever the reason
            raise RetryableError(f"job queue unavailable: {type(e).__name__}: {e}") from e
        return Published(job=job, seq=int(ack.seq), duplicate=bool(ack.duplicate))

    async def publish_record(
        self,
        rec: ImageRecord,
        *,
        attempt: int | None = None,
        models: Sequence[str] = (),
        msg_id: str | None = None,
        cause: Cause = Cause.UPLOAD,
    ) -> Published:
        """Build the record's job (see ``job_for``) and publish it."""
        return await self.publish(job_for(rec, attempt=attempt, models=models, cause=cause), msg_id=msg_id)

    async def health(self) -> str | None:
        """What is wrong with the engine's own server, ``ok``, or None when it has none apart from NATS."""
        return None

    async def dead_letter(self, dead: DeadLetter) -> None:
        """Store a job that was given up on ``contract.DEAD_SUBJECT`` (in the same stream, so operators can
        replay it), once per (image, attempt): a repeat is dropped by its ``Nats-Msg-Id``."""
        msg_id = f"dead:{contract.job_msg_id(dead.job.image_id, dead.job.attempt)}"
        try:
            await self.js.publish(
                contract.DEAD_SUBJECT,
                contract.encode(dead),
                timeout=self.timeout_s,
                headers={contract.MSG_ID_HEADER: msg_id},
            )
        except Exception as e:  # broad on purpose: no acknowledgement means not stored, whatever the reason
            raise RetryableError(f"dead letter not stored: {type(e).__name__}: {e}") from e
