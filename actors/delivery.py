"""The coordinator's delivery policy: what becomes of a delivered job once an attempt at it has ended.

A pure function of the outcome (no exception, or its kind), the delivery count, ``max_deliver`` and the
configured backoff; the coordinator carries the decision out on the JetStream message:

| outcome | decision |
| --- | --- |
| success | ``ACK`` |
| ``PermanentError`` (undecodable bytes, a service's 4xx, a step's rejection) | ``GIVE_UP`` with its code |
| an outage (``RetryableError`` not about this job: Triton, Redis, S3, a service's 5xx) while the job may still wait | ``WAIT`` in place, keeping its delivery |
| ``RetryableError`` otherwise (its object missing, an outage past the wait) | ``RETRY`` after the backoff step, ``GIVE_UP`` on the last delivery |
| any other exception (a bug) | ``RETRY`` after the first backoff step, ``GIVE_UP`` with code ``internal`` on the last delivery |

``GIVE_UP`` records ``error`` with the reason, publishes the dead letter and stops the job's deliveries.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from actors.adapters.object_store import ObjectMissing
from actors.errors import PermanentError, RetryableError

DEFAULT_DELAY_S = 1.0  # a nak's delay when the config has no backoff steps


class Action(enum.Enum):
    ACK = "ack"  # done (or nothing to do): the job leaves the consumer
    WAIT = "wait"  # a shared dependency is down: run the job again in place, its delivery kept
    RETRY = "retry"  # nak with ``delay_s``: JetStream delivers it again, spending a delivery
    GIVE_UP = "give_up"  # record ``error`` (``code``, ``reason``), dead-letter, and stop its deliveries


@dataclass(frozen=True)
class Decision:
    action: Action
    delay_s: float = 0.0
    code: str = ""
    reason: str = ""
    crashed: bool = False  # the attempt ended in an unexpected exception (a bug): worth a traceback


ACK = Decision(Action.ACK)
WAIT = Decision(Action.WAIT)


def is_outage(exc: BaseException) -> bool:
    """A dependency every job shares is down: not the job's fault, so it must not spend its deliveries.

    Job-specific trouble (the job's own object missing) is retryable too, but only by delivering it again.
    """
    return isinstance(exc, RetryableError) and not isinstance(exc, ObjectMissing)


def backoff_delay(backoff_s: Sequence[float], delivered: int) -> float:
    """The nak delay after delivery number ``delivered`` (1-based): its backoff step, the last one after."""
    if not backoff_s:
        return DEFAULT_DELAY_S
    return backoff_s[min(max(delivered, 1) - 1, len(backoff_s) - 1)]


def decide(
    exc: BaseException | None,
    *,
    delivered: int,
    max_deliver: int,
    backoff_s: Sequence[float],
    may_wait: bool = False,
) -> Decision:
    """What to do with a job whose attempt ended with ``exc`` (None: it succeeded) on delivery ``delivered``.

    ``may_wait`` says the job may still wait in place for an outage (the coordinator's outage budget is not
    spent); ``max_deliver`` is the smaller of the config's and the consumer's, so the last delivery is one
    that will happen.
    """
    if exc is None:
        return ACK
    last = delivered >= max_deliver
    if isinstance(exc, PermanentError):
        return Decision(Action.GIVE_UP, code=exc.code, reason=exc.message)
    if isinstance(exc, RetryableError):
        if may_wait and is_outage(exc):
            return WAIT
        if last:
            return Decision(
                Action.GIVE_UP, code=exc.code, reason=f"gave up after {delivered} deliveries: {exc}"
            )
        return Decision(Action.RETRY, delay_s=backoff_delay(backoff_s, delivered), reason=str(exc))
    reason = f"{type(exc).__name__}: {exc}"
    if last:
        return Decision(Action.GIVE_UP, code="internal", reason=reason, crashed=True)
    return Decision(Action.RETRY, delay_s=backoff_delay(backoff_s, 1), reason=reason, crashed=True)


__all__ = ["ACK", "WAIT", "Action", "Decision", "backoff_delay", "decide", "is_outage"]
