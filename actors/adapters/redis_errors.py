"""One mapping of Redis failures to the mesh's errors, for every adapter that talks to Redis.

An outage (connection refused or lost, a timeout, Redis loading its AOF after a restart, a busy script) becomes
``RetryableError``: the coordinator waits and retries, a service answers 503. Anything else (a wrong command, a
permission refused) is a bug or a misconfiguration and propagates as it is.
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

_BUSY_REPLIES = ("LOADING", "TRYAGAIN", "BUSY")


def causes(exc: BaseException) -> Iterator[BaseException]:
    """An exception and its causes: redisvl wraps redis-py's errors, whose type tells an outage apart."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def as_retryable(exc: BaseException, op: str) -> RetryableError | None:
    """The ``RetryableError`` this failure amounts to, or None when it is not an outage."""
    for e in causes(exc):
        # BusyLoadingError is a ConnectionError: Redis is replaying its AOF after a restart
        if isinstance(e, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | OSError):
            return RetryableError(f"redis unavailable during {op}: {e}")
        if isinstance(e, redis.exceptions.ResponseError) and str(e).upper().startswith(_BUSY_REPLIES):
            return RetryableError(f"redis busy during {op}: {e}")
    return None


@contextmanager
def redis_errors(op: str) -> Iterator[None]:
    """Turn Redis outages inside the block into ``RetryableError``; other Redis errors propagate."""
    try:
        yield
    except (redis.exceptions.RedisError, RedisVLError, OSError) as exc:
        mapped = as_retryable(exc, op)
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
