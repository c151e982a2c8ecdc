"""Waiting out a dependency outage in place: a job that finds Triton, Redis, S3 or a service down runs again.

An outage is not the job's fault, so it must not spend the job's deliveries: the job keeps its delivery
(in-progress acks before every wait) and runs again with exponential backoff (0.5 s doubling to 5 s) for up
to ``OutagePolicy.budget_s``. Since every slot of a coordinator waits, it stops fetching (back-pressure).
What counts as an outage is the delivery policy's ``is_outage``; anything else, and an outage that outlasts
the budget, is raised for the delivery policy to decide.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay, wait_exponential

from actors.delivery import is_outage

log = structlog.get_logger("coordinator")
_T = TypeVar("_T")


@dataclass(frozen=True)
class OutagePolicy:
    budget_s: float = 600.0  # how long a job waits in place before JetStream's redelivery takes over
    first_delay_s: float = 0.5
    max_delay_s: float = 5.0


OUTAGE_POLICY = OutagePolicy()


async def through_outages(
    attempt: Callable[[], Awaitable[_T]],
    *,
    heartbeat: Callable[[], Awaitable[None]],
    policy: OutagePolicy = OUTAGE_POLICY,
    image_id: str = "",
) -> _T:
    """``await attempt()``, again after each outage, until it succeeds, fails otherwise, or the budget ends."""

    async def sleep(seconds: float) -> None:
        await heartbeat()  # the wait is the job's work: JetStream must not think it crashed
        await asyncio.sleep(seconds)

    def log_wait(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.info("job.waiting_for_dependency", image_id=image_id, error=str(error), delay_s=delay)

    retrying = AsyncRetrying(
        retry=retry_if_exception(is_outage),
        wait=wait_exponential(multiplier=policy.first_delay_s, max=policy.max_delay_s),
        stop=stop_after_delay(policy.budget_s),
        sleep=sleep,
        before_sleep=log_wait,
        reraise=True,
    )
    return await retrying(attempt)
