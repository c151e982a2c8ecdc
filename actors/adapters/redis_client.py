"""One way to open an async Redis client for the mesh's adapters: a connection that died idle is replaced.

After Redis restarts, each client's pool still holds the connections it had: the first command on each one
fails ("Connection closed by server"), possibly minutes later, when a burst of work reaches a connection that
sat idle (seen in the chaos suite: a fault-free ingest 100 s after a Redis kill waited out an outage that was
over). ``redis.asyncio.Redis.from_url`` retries nothing by default, whatever ``Redis()`` does. Here:

- a connection idle for ``health_check_s`` is PINGed before its next command, and the PING (harmless to run
  twice) is sent again on a new connection when the old one is dead: the command then goes out on that one;
- a command that could not be sent (the error says so: writing to the socket, or connecting) is sent again
  once, at once. A command whose reply was lost is not: it may have run, and running a history append twice
  would record a state twice. Every other error is the caller's (``redis_errors`` maps them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

_T = TypeVar("_T")
UNSENT = ("while writing to socket", "connecting to")  # redis-py's messages for a command not sent
HEALTH_CHECK = "_send_ping"  # the method redis-py's Connection.check_health retries through the policy


def never_sent(error: Exception) -> bool:
    """Whether a connection error happened before the command reached Redis."""
    return isinstance(error, RedisConnectionError) and any(m in str(error) for m in UNSENT)


class ResendUnsent(Retry):
    """One immediate new attempt for a health-check PING, or a command that could not be sent."""

    def __init__(self) -> None:
        super().__init__(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,))

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[_T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> _T:
        if (
            getattr(do, "__name__", "") != HEALTH_CHECK
        ):  # redis-py's PING before a command on an idle connection
            is_retryable = is_retryable or never_sent
        return await super().call_with_retry(
            do, fail, is_retryable=is_retryable, with_failure_count=with_failure_count
        )


def redis_client(
    url: str, *, timeout_s: float = 5.0, health_check_s: float = 5.0, **kwargs: Any
) -> aioredis.Redis:
    """An async client of ``url`` that replaces dead idle connections (see the module docstring); socket and
    connect timeouts ``timeout_s``, the connect's at most 3 s."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=min(timeout_s, 3.0),
        health_check_interval=health_check_s,
        retry=ResendUnsent(),
        retry_on_error=[RedisConnectionError],
        **kwargs,
    )


__all__ = ["ResendUnsent", "never_sent", "redis_client"]
