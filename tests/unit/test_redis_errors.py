"""Which Redis failures are outages (``RetryableError``) and which propagate: ``actors/adapters/redis_errors``."""

from __future__ import annotations

import pytest
import redis.exceptions
from redis._parsers.base import BaseParser
from redisvl.exceptions import RedisSearchError

from actors.adapters.redis_errors import as_retryable, maps_redis_errors, redis_errors
from actors.errors import RetryableError


def reply(text: str) -> redis.exceptions.ResponseError:
    """The exception redis-py raises for this error reply (it strips the codes it has a class for)."""
    return BaseParser.parse_error(text)


@pytest.mark.parametrize(
    "exc",
    [
        redis.exceptions.ConnectionError("Connection refused"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        ConnectionResetError("reset by peer"),
        reply("LOADING Redis is loading the dataset in memory"),
        reply("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."),
        reply("TRYAGAIN Multiple keys request during rehashing of slot"),
        reply("READONLY You can't write against a read only replica."),
        reply("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
        reply("OOM command not allowed when used memory > 'maxmemory'."),
        reply("WRONGPASS invalid username-password pair or user is disabled."),
    ],
    ids=lambda e: type(e).__name__,
)
def test_outages_are_retryable(exc: Exception) -> None:
    with pytest.raises(RetryableError), redis_errors("op"):
        raise exc


@pytest.mark.parametrize(
    "exc",
    [
        reply("WRONGTYPE Operation against a key holding the wrong kind of value"),
        reply("ERR unknown command 'FT.SEARCH'"),
        reply("NOPERM User mesh has no permissions to run the 'flushall' command"),
        redis.exceptions.DataError("Invalid input of type: 'NoneType'"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_bugs_and_permissions_propagate_unchanged(exc: Exception) -> None:
    with pytest.raises(type(exc)) as raised, redis_errors("op"):
        raise exc
    assert raised.value is exc


def test_permission_is_an_outage_when_asked() -> None:
    noperm = reply("NOPERM User mesh has no permissions to access the 'x' key")
    assert isinstance(noperm, redis.exceptions.NoPermissionError)
    with pytest.raises(RetryableError) as raised, redis_errors("get", permission_is_outage=True):
        raise noperm
    assert raised.value.__cause__ is noperm and "permission" in raised.value.message
    # a bug stays a bug
    with pytest.raises(redis.exceptions.ResponseError), redis_errors("get", permission_is_outage=True):
        raise reply("WRONGTYPE Operation against a key holding the wrong kind of value")


def test_redisvl_wrapped_outage_is_found_in_the_causes() -> None:
    try:
        try:
            raise redis.exceptions.ConnectionError("Connection refused")
        except redis.exceptions.ConnectionError as inner:
            raise RedisSearchError("Error while searching") from inner
    except RedisSearchError as outer:
        assert as_retryable(outer, "query") is not None


async def test_maps_redis_errors_names_the_method() -> None:
    @maps_redis_errors
    async def fetch() -> None:
        raise redis.exceptions.ConnectionError("gone")

    with pytest.raises(RetryableError, match="during fetch"):
        await fetch()
