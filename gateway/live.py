"""Live status for browsers: ``GET /events`` relays the mesh's image events (``images.events.*``) as
server-sent events, so a page follows every image it shows through one connection instead of polling each.

Each stream subscribes to NATS for as long as the client stays; it is told which images to follow
(``image_id``, repeatable: at most ``MAX_IDS``) or gets every event. A slow client cannot hold the gateway's
memory: its queue is bounded (``QUEUE``) and the oldest events are dropped first (the page re-reads a record
when it reconnects). A comment line every ``KEEPALIVE_S`` keeps proxies from closing an idle stream. At most
``MAX_STREAMS`` streams per gateway process: beyond, ``503`` with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from nats.aio.msg import Msg
from prometheus_client import Gauge

from actors import contract
from actors.contract import ImageEvent
from gateway.deps import Svc, require_api_key
from gateway.errors import ApiError, error_responses

log = structlog.get_logger("live")

MAX_STREAMS = 200
MAX_IDS = 500
QUEUE = 256
KEEPALIVE_S = 15.0
STREAMS = Gauge("mesh_gateway_event_streams", "Server-sent event streams open on this gateway")

router = APIRouter(
    dependencies=[Depends(require_api_key)], tags=["library"], responses=error_responses(401, 403, 429)
)
_open = 0


def sse(event: ImageEvent) -> bytes:
    """One event in the text/event-stream format: its state as the event name, the event as JSON data."""
    return b"event: " + event.status.value.encode() + b"\ndata: " + contract.encode(event) + b"\n\n"


@router.get(
    "/events",
    operation_id="image_events",
    response_class=StreamingResponse,
    responses={
        200: {"description": "text/event-stream of image events", "content": {"text/event-stream": {}}},
        **error_responses(400, 503),
    },
)
async def events(
    request: Request,
    svc: Svc,
    image_id: Annotated[list[str], Query(description=f"only these images (at most {MAX_IDS})")] = [],  # noqa: B006
) -> StreamingResponse:
    """Image events as they happen (server-sent events): `event:` is the state, `data:` the `ImageEvent`
    JSON published on `images.events.<state>` (`image_id`, `status`, `at`, `error`...)."""
    global _open
    if len(image_id) > MAX_IDS:
        raise ApiError(400, "too_many_ids", f"at most {MAX_IDS} image_id parameters")
    if _open >= MAX_STREAMS:
        raise ApiError(503, "unavailable", "too many event streams open", headers={"Retry-After": "5"})
    wanted = set(image_id)
    queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE)

    async def relay(msg: Msg) -> None:
        try:
            event = contract.decode(msg.data, ImageEvent)
        except Exception:  # broad on purpose: someone else's message on the subject is not ours to relay
            return
        if wanted and event.image_id not in wanted:
            return
        if queue.full():  # the client is slow: drop the oldest, keep the newest
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
        queue.put_nowait(sse(event))

    sub = await svc.nc.subscribe(contract.EVENTS_SUBJECTS, cb=relay)
    _open += 1
    STREAMS.set(_open)

    async def stream() -> AsyncIterator[bytes]:
        global _open
        try:
            yield b": connected\n\n"
            while not await request.is_disconnected():
                try:
                    yield await asyncio.wait_for(queue.get(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
        finally:
            _open -= 1
            STREAMS.set(_open)
            with contextlib.suppress(Exception):  # broad on purpose: the stream is over either way
                await sub.unsubscribe()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
