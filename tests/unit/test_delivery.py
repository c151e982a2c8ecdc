"""The delivery policy (``actors.delivery.decide``) and the typed errors of a service's error reply."""

from __future__ import annotations

import pytest

from actors.adapters.embedder import EmbedderUnavailable
from actors.adapters.object_store import ObjectMissing
from actors.delivery import ACK, WAIT, Action, Decision, backoff_delay, decide, is_outage
from actors.errors import (
    PermanentError,
    RetryableError,
    ServiceCallError,
    ServiceRefused,
    ServiceUnavailable,
    service_call_error,
)

BACKOFF = [1.0, 2.0, 5.0]


def policy(exc: BaseException | None, delivered: int = 1, max_deliver: int = 3, **kw: bool) -> Decision:
    return decide(exc, delivered=delivered, max_deliver=max_deliver, backoff_s=BACKOFF, **kw)


def test_success_is_acked() -> None:
    assert policy(None) == ACK
    assert policy(None, delivered=3) == ACK


def test_a_permanent_error_gives_up_at_once_with_its_code() -> None:
    d = policy(PermanentError("cannot decode", code="undecodable"))
    assert (d.action, d.code, d.reason, d.crashed) == (Action.GIVE_UP, "undecodable", "cannot decode", False)


def test_an_outage_waits_in_place_while_it_may() -> None:
    for outage in (
        RetryableError("redis down"),
        EmbedderUnavailable("triton down"),
        ServiceUnavailable("index.upsert", "503", "redis"),
    ):
        assert is_outage(outage)
        assert policy(outage, may_wait=True) == WAIT
        assert policy(outage, delivered=3, may_wait=True) == WAIT  # waiting spends no delivery


def test_job_specific_trouble_spends_deliveries_with_backoff_then_gives_up() -> None:
    missing = ObjectMissing("no object images/ab/abc")
    assert not is_outage(missing)
    first, second = policy(missing, 1, may_wait=True), policy(missing, 2, may_wait=True)
    assert (first.action, first.delay_s) == (Action.RETRY, 1.0)
    assert (second.action, second.delay_s) == (Action.RETRY, 2.0)
    last = policy(missing, 3, may_wait=True)
    assert (last.action, last.code) == (Action.GIVE_UP, "object_missing")
    assert last.reason.startswith("gave up after 3 deliveries: ")


def test_an_outage_past_its_wait_goes_back_to_redelivery() -> None:
    d = policy(RetryableError("triton down"), delivered=2)
    assert (d.action, d.delay_s) == (Action.RETRY, 2.0)
    assert policy(RetryableError("triton down"), delivered=3).action is Action.GIVE_UP


def test_a_bug_is_retried_then_dead_lettered_as_internal() -> None:
    d = policy(KeyError("oops"), delivered=2)
    assert (d.action, d.delay_s, d.crashed) == (Action.RETRY, 1.0, True)
    last = policy(KeyError("oops"), delivered=3)
    assert (last.action, last.code, last.crashed) == (Action.GIVE_UP, "internal", True)
    assert last.reason == "KeyError: 'oops'"


def test_backoff_steps() -> None:
    assert [backoff_delay(BACKOFF, n) for n in (1, 2, 3, 4, 9)] == [1.0, 2.0, 5.0, 5.0, 5.0]
    assert backoff_delay([], 1) > 0
    assert backoff_delay(BACKOFF, 0) == 1.0


@pytest.mark.parametrize(
    ("code", "kind", "base", "retryable"),
    [
        ("503", ServiceUnavailable, RetryableError, True),
        ("500", ServiceUnavailable, RetryableError, True),
        ("400", ServiceRefused, PermanentError, False),
        ("404", ServiceRefused, PermanentError, False),
    ],
)
def test_a_service_error_reply_is_typed_by_its_code(
    code: str, kind: type[ServiceCallError], base: type[Exception], retryable: bool
) -> None:
    err = service_call_error("index.upsert", code, "the reason")
    assert isinstance(err, kind) and isinstance(err, base) and isinstance(err, ServiceCallError)
    assert (err.code, err.description, err.retryable) == (code, "the reason", retryable)
    assert err.message == "index.upsert: the reason"
    d = policy(err, delivered=1, may_wait=True)
    assert d.action is (Action.WAIT if retryable else Action.GIVE_UP)
    if not retryable:
        assert d.code == code
