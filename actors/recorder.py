"""The one way the workflow changes an image's record: state transitions, step notes and field updates.

A transition is three things that must not drift apart: the record's new state and its history entry
(``WorkflowStore.transition``, one Redis transaction), the event for internal consumers
(``images.events.<status>``) and a log line. ``Pipeline`` and the operators' replay both go through a
``Recorder``, so every state change an image goes through is published and logged the same way.

Each entry says why it was written (``Provenance``: ``cause``, ``attempt`` and, for a job's processing, the
JetStream ``delivery`` number and the job's stream sequence ``job_seq``), so two ``done`` entries caused by one
delivery of one job are recognisable (``mesh check``). The fields are added to the entry; the others stay. A
caller passes ``why``, or sets it for everything a task writes meanwhile with ``recording``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from actors.contract import Cause, ErrorInfo, ImageEvent, ImageRecord, ProcessJob, Status

log = structlog.get_logger("workflow")


class RecordStore(Protocol):
    """What the workflow needs of the Workflow DB (``actors.adapters.workflow_store.WorkflowStore``)."""

    async def get(self, image_id: str) -> ImageRecord | None: ...
    async def transition(
        self, image_id: str, status: Status, *, provenance: dict[str, Any] | None = None, **fields: Any
    ) -> float: ...
    async def note(self, image_id: str, step: str, **detail: Any) -> float: ...
    async def update(self, image_id: str, **fields: Any) -> None: ...


class EventSink(Protocol):
    """Where state-change events go (``actors.adapters.events.Events``: never raises)."""

    async def publish(self, event: ImageEvent) -> None: ...


@dataclass(frozen=True)
class Provenance:
    """Why a history entry is written: the cause, the job's attempt, and for a delivered job its delivery
    number and stream sequence (``None``: not from a delivery)."""

    cause: Cause
    attempt: int = 0
    delivery: int | None = None
    job_seq: int | None = None

    def entry(self) -> dict[str, Any]:
        """The fields this adds to a history entry (and to the event's ``detail``)."""
        out: dict[str, Any] = {"cause": self.cause.value, "attempt": self.attempt}
        if self.delivery is not None:
            out["delivery"] = self.delivery
        if self.job_seq is not None:
            out["job_seq"] = self.job_seq
        return out


def job_provenance(job: ProcessJob, delivery: int | None = None, job_seq: int | None = None) -> Provenance:
    """The provenance of what a job's processing writes: a delivery after the first is a ``retry``; otherwise
    the job's own cause (an unknown one, from a newer publisher, counts as ``upload``)."""
    if delivery is not None and delivery > 1:
        cause = Cause.RETRY
    else:
        cause = Cause(job.cause) if job.cause in {c.value for c in Cause} else Cause.UPLOAD
    return Provenance(cause, job.attempt, delivery, job_seq)


_CURRENT: ContextVar[Provenance | None] = ContextVar("mesh_provenance", default=None)


@contextlib.contextmanager
def recording(why: Provenance) -> Iterator[None]:
    """Inside the block (in this asyncio task) every entry the ``Recorder`` writes without an explicit ``why``
    carries ``why``: the coordinator wraps one delivery of a job so (the pipeline knows nothing of deliveries)."""
    token = _CURRENT.set(why)
    try:
        yield
    finally:
        _CURRENT.reset(token)


class Recorder:
    """Writes an image's state changes, history notes and fields; publishes and logs each state change."""

    def __init__(self, store: RecordStore, events: EventSink) -> None:
        self.store = store
        self.events = events

    async def transition(
        self,
        image_id: str,
        status: Status,
        *,
        trace_id: str = "",
        why: Provenance | None = None,
        **fields: Any,
    ) -> float:
        """Move the record to ``status`` (with ``fields``), append its history entry (with ``why``'s fields),
        publish the event."""
        why = why or _CURRENT.get()
        provenance = why.entry() if why is not None else {}
        at = await self.store.transition(image_id, status, provenance=provenance, **fields)
        err = fields.get("error")
        model = fields.get("model")
        await self.events.publish(
            ImageEvent(
                image_id=image_id,
                status=status,
                at=at,
                trace_id=trace_id,
                model=model,
                error=err if isinstance(err, ErrorInfo) else None,
                detail=provenance,
            )
        )
        log.info(
            "image.state",
            image_id=image_id,
            trace_id=trace_id,
            status=status.value,
            **provenance,
            **({"model": model} if model else {}),
            **({"error_code": err.code} if isinstance(err, ErrorInfo) else {}),
        )
        return at

    async def note(self, image_id: str, step: str, *, why: Provenance | None = None, **detail: Any) -> None:
        """A history entry of a step (``{"step", "at", ...}``) that does not change the state."""
        why = why or _CURRENT.get()
        await self.store.note(image_id, step, **(detail | (why.entry() if why is not None else {})))

    async def update(self, image_id: str, **fields: Any) -> None:
        """Fields without a history entry (e.g. the metadata the steps added, a replay's attempt)."""
        await self.store.update(image_id, **fields)
