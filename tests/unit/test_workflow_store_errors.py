"""The workflow store's Redis failures as the coordinator sees them: outages and permission refusals are
``RetryableError`` (jobs wait), anything else propagates (a bug). No Redis: the client's calls are replaced."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import redis.exceptions
from redis._parsers.base import BaseParser

from actors.adapters.workflow_store import WorkflowStore
from actors.contract import Status
from actors.errors import RetryableError


@pytest.fixture
async def store() -> AsyncIterator[WorkflowStore]:
    s = WorkflowStore("redis://127.0.0.1:1/0", "t")  # never connects: every call below is replaced
    yield s
    await s.close()


def failing(exc: BaseException) -> Any:
    async def call(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return call


@pytest.mark.parametrize(
    "exc",
    [
        redis.exceptions.ConnectionError("Connection refused"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        BaseParser.parse_error("NOPERM User mesh has no permissions to access one of the keys"),
        BaseParser.parse_error("OOM command not allowed when used memory > 'maxmemory'."),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_outages_and_permission_refusals_are_retryable(
    store: WorkflowStore, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    monkeypatch.setattr(store._redis, "get", failing(exc))
    monkeypatch.setattr(store._redis, "set", failing(exc))
    with pytest.raises(RetryableError) as raised:
        await store.owner_of("abc")
    assert raised.value.__cause__ is exc
    with pytest.raises(RetryableError):
        await store.set_embedding("m", "img", np.ones(4, np.float32))
    with pytest.raises(RetryableError):
        await store.get_embedding("m", "img")


async def test_a_bug_propagates(store: WorkflowStore, monkeypatch: pytest.MonkeyPatch) -> None:
    wrongtype = BaseParser.parse_error("WRONGTYPE Operation against a key holding the wrong kind of value")
    monkeypatch.setattr(store._redis, "get", failing(wrongtype))
    with pytest.raises(redis.exceptions.ResponseError) as raised:
        await store.owner_of("abc")
    assert raised.value is wrongtype


async def test_a_refused_connection_is_retryable_end_to_end(store: WorkflowStore) -> None:
    """The real client against a closed port: every method, pipelines and scans included."""
    with pytest.raises(RetryableError):
        await store.get("img")
    with pytest.raises(RetryableError):
        await store.transition("img", Status.PROCESSING)
    with pytest.raises(RetryableError):
        await store.status_and_embedding("img", "m")
    with pytest.raises(RetryableError):
        await store.delete("img", "abc")
    with pytest.raises(RetryableError):
        await store.ids_in_status(Status.ERROR)
    assert await store.ping() is not None
