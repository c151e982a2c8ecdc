"""The coordinator's intake: its durable JetStream consumer, and fetching jobs only while it has room for them.

``ensure_consumer`` creates the shared durable pull consumer (or brings an existing one to the config's
delivery policy), retrying while JetStream is not ready. ``Slots`` counts the jobs in flight against a limit
the config may change at any time; ``fetch_jobs`` pulls no more messages than there is room for, so jobs
that wait for a down dependency hold their slots and the coordinator stops fetching (back-pressure). A NATS
outage only pauses the fetching: the client reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, ConsumerInfo
from prometheus_client import Gauge
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_fixed

from actors.errors import RetryableError

log = structlog.get_logger("coordinator")

FETCH_TIMEOUT_S = 1.0
FETCH_PAUSE_S = 1.0  # after a failed fetch (NATS down or restarting)
CONSUMER_ATTEMPTS = 60  # one a second: JetStream may still be recovering its streams at start
NATS_ERRORS = (nats.errors.Error, OSError)  # what a NATS call raises when the server is away
IN_FLIGHT = Gauge("mesh_jobs_in_flight", "Jobs this coordinator is working on")


async def ensure_consumer(js: JetStreamContext, stream: str, consumer: ConsumerConfig) -> ConsumerInfo:
    """Create the durable consumer, or update it to ``consumer``; ``RetryableError`` if JetStream won't."""

    def log_failure(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("consumer.create_failed", error=str(error), attempt=state.attempt_number)

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(NATS_ERRORS),
        stop=stop_after_attempt(CONSUMER_ATTEMPTS),
        wait=wait_fixed(1.0),
        before_sleep=log_failure,
        reraise=True,
    )
    try:
        return await retrying(js.add_consumer, stream, consumer)
    except NATS_ERRORS as e:
        raise RetryableError(f"could not create the durable consumer {consumer.durable_name}: {e}") from e


class Slots:
    """Jobs in flight against a limit; waiting for room wakes on a finished job or on ``stop``."""

    def __init__(self) -> None:
        self.in_use = 0
        self._changed = asyncio.Condition()

    async def room(self, limit: int, stop: asyncio.Event) -> int:
        """Wait until fewer than ``limit`` jobs run; how many more may start (0 once ``stop`` is set)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_use < limit or stop.is_set())
        return 0 if stop.is_set() else limit - self.in_use

    def take(self) -> None:
        self.in_use += 1
        IN_FLIGHT.inc()

    async def release(self) -> None:
        self.in_use -= 1
        IN_FLIGHT.dec()
        await self._notify()

    async def wake_on(self, stop: asyncio.Event) -> None:
        """Run alongside the fetching: once ``stop`` is set, a fetch waiting for room gives up waiting."""
        await stop.wait()
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


async def fetch_jobs(
    sub: JetStreamContext.PullSubscription,
    slots: Slots,
    concurrency: Callable[[], Awaitable[int]],
    stop: asyncio.Event,
) -> AsyncIterator[Msg]:
    """Messages from the pull subscription, each with a slot taken, until ``stop`` is set.

    ``concurrency()`` is asked before every fetch (the config's ``coordinator_concurrency``).
    """
    while not stop.is_set():
        free = await slots.room(max(1, await concurrency()), stop)
        if not free:
            break
        try:
            msgs = await sub.fetch(free, timeout=FETCH_TIMEOUT_S)
        except TimeoutError:  # nothing to do (nats.errors.TimeoutError is one too)
            continue
        except Exception as e:  # broad on purpose: this loop must outlive whatever a NATS outage raises
            log.warning("fetch.failed", error=f"{type(e).__name__}: {e}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=FETCH_PAUSE_S)
            continue
        for msg in msgs:
            slots.take()
            yield msg
