"""The one way the workflow changes an image's record: state transitions, step notes and field updates.

A transition is three things that must not drift apart: the record's new state and its history entry
(``WorkflowStore.transition``, one Redis transaction), the event for internal consumers
(``images.events.<status>``) and a log line. ``Pipeline`` and the operators' replay both go through a
``Recorder``, so every state change an image goes through is published and logged the same way.
"""

from __future__ import annotations

from typing import Any, Protocol

import structlog

from actors.contract import ErrorInfo, ImageEvent, ImageRecord, Status

log = structlog.get_logger("workflow")


class RecordStore(Protocol):
    """What the workflow needs of the Workflow DB (``actors.adapters.workflow_store.WorkflowStore``)."""

    async def get(self, image_id: str) -> ImageRecord | None: ...
    async def transition(self, image_id: str, status: Status, **fields: Any) -> float: ...
    async def note(self, image_id: str, step: str, **detail: Any) -> float: ...
    async def update(self, image_id: str, **fields: Any) -> None: ...


class EventSink(Protocol):
    """Where state-change events go (``actors.adapters.events.Events``: never raises)."""

    async def publish(self, event: ImageEvent) -> None: ...


class Recorder:
    """Writes an image's state changes, history notes and fields; publishes and logs each state change."""

    def __init__(self, store: RecordStore, events: EventSink) -> None:
        self.store = store
        self.events = events

    async def transition(self, image_id: str, status: Status, *, trace_id: str = "", **fields: Any) -> float:
        """Move the record to ``status`` (with ``fields``), append its history entry, publish the event."""
        at = await self.store.transition(image_id, status, **fields)
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
            )
        )
        log.info(
            "image.state",
            image_id=image_id,
            trace_id=trace_id,
            status=status.value,
            **({"model": model} if model else {}),
            **({"error_code": err.code} if isinstance(err, ErrorInfo) else {}),
        )
        return at

    async def note(self, image_id: str, step: str, **detail: Any) -> None:
        """A history entry of a step (``{"step", "at", ...}``) that does not change the state."""
        await self.store.note(image_id, step, **detail)

    async def update(self, image_id: str, **fields: Any) -> None:
        """Fields without a history entry (e.g. the metadata the steps added, a replay's attempt)."""
        await self.store.update(image_id, **fields)
