"""One mapping of Redis failures to the mesh's errors, for every adapter that talks to Redis.

An outage (connection refused or lost, a timeout, Redis loading its AOF after a restart, a busy script, a
failover in progress: ``READONLY``/``MASTERDOWN``/``CLUSTERDOWN``/``TRYAGAIN``, a full Redis: ``OOM``) becomes
``RetryableError``: the coordinator waits and retries, a service answers 503. Anything else (a wrong command, a
wrong type) is a bug and propagates as it is. A permission refused (``NOPERM``: the ACL user lost a command or
a key pattern) is a misconfiguration: it propagates too, unless the caller passes ``permission_is_outage=True``
(the workflow store does: an operator's ACL fix lets every waiting job go on, where propagating would
dead-letter them all). A refused login (``WRONGPASS``: the ACL user switched off or its password changed)
is always an outage: redis-py raises it as a ``ConnectionError`` while it (re)connects.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import redis.exceptions
from redisvl.exceptions import RedisVLError

from actors.errors import RetryableError

_P = ParamSpec("_P")
_T = TypeVar("_T")

# redis-py strips the code off the replies it has a class for (TRYAGAIN, READONLY, OOM...): those go by type;
# the rest (BUSY, and any reply redisvl re-wraps as text) by the code the message starts with
_OUTAGE_REPLY_TYPES = (
    redis.exceptions.TryAgainError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,  # MasterDownError too
    redis.exceptions.OutOfMemoryError,
)
_BUSY_REPLIES = ("LOADING", "TRYAGAIN", "BUSY", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "OOM")


def causes(exc: BaseException) -> Iterator[BaseException]:
    """An exception and its causes: redisvl wraps redis-py's errors, whose type tells an outage apart."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def as_retryable(exc: BaseException, op: str, *, permission_is_outage: bool = False) -> RetryableError | None:
    """The ``RetryableError`` this failure amounts to, or None when it is not an outage.

    ``permission_is_outage``: count a ``NOPERM`` refusal as an outage too (see the module docstring).
    """
    for e in causes(exc):
        # BusyLoadingError is a ConnectionError: Redis is replaying its AOF after a restart
        if isinstance(e, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | OSError):
            return RetryableError(f"redis unavailable during {op}: {e}")
        if isinstance(e, _OUTAGE_REPLY_TYPES) or (
            isinstance(e, redis.exceptions.ResponseError) and str(e).upper().startswith(_BUSY_REPLIES)
        ):
            return RetryableError(f"redis busy during {op}: {type(e).__name__}: {e}")
        if permission_is_outage and isinstance(e, redis.exceptions.NoPermissionError):
            return RetryableError(f"redis refused permission during {op}: {e}")
    return None


@contextmanager
def redis_errors(op: str, *, permission_is_outage: bool = False) -> Iterator[None]:
    """Turn Redis outages inside the block into ``RetryableError``; other Redis errors propagate.

    ``permission_is_outage``: a ``NOPERM`` refusal becomes ``RetryableError`` too (for the workflow store).
    """
    try:
        yield
    except (redis.exceptions.RedisError, RedisVLError, OSError) as exc:
        mapped = as_retryable(exc, op, permission_is_outage=permission_is_outage)
        if mapped is not None:
            raise mapped from exc
        raise


def maps_redis_errors(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """``redis_errors`` around a whole coroutine method, named after it."""

    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        with redis_errors(fn.__name__):
            return await fn(*args, **kwargs)

    return wrapper
