"""Image events for internal consumers: every state change on ``images.events.<status>``.

Plain publishes: the ``IMAGE_EVENTS`` stream captures them durably; the workflow record, not the event, is the
source of truth, so a lost event (NATS down at that instant) never loses work.
"""

from __future__ import annotations

import structlog
from nats.aio.client import Client

from actors import contract
from actors.contract import ImageEvent

log = structlog.get_logger("events")


class Events:
    """Publishes image events on one NATS connection; a failed publish is logged, never raised."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc

    async def publish(self, event: ImageEvent) -> None:
        headers = {contract.TRACE_HEADER: event.trace_id} if event.trace_id else None
        try:
            await self._nc.publish(
                contract.event_subject(event.status), contract.encode(event), headers=headers
            )
        except Exception as e:  # an event is a notification: never fail the work for it
            log.warning("event.publish_failed", image_id=event.image_id, status=event.status, error=str(e))
