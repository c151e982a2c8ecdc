"""The admission rules (``gateway/admission.py``) on numbers a fake JetStream gives: which refusal wins, what
counts as the backlog, where the store's limit comes from. The real servers' numbers: tests/e2e/test_admission.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from nats.js.errors import NotFoundError

from actors.contract import MeshConfig
from actors.settings import Settings
from gateway.admission import Admission
from gateway.errors import ApiError


class FakeJetStream:
    """Consumer, stream and account info as JetStream answers them."""

    def __init__(
        self,
        *,
        pending: int | None,
        ack_pending: int = 0,
        stream_messages: int = 0,
        stored: int = 0,
        account_limit: int = -1,
    ) -> None:
        self.pending, self.ack_pending, self.stream_messages = pending, ack_pending, stream_messages
        self.stored, self.account_limit = stored, account_limit

    async def consumer_info(self, stream: str, consumer: str) -> Any:
        if self.pending is None:
            raise NotFoundError
        return SimpleNamespace(num_pending=self.pending, num_ack_pending=self.ack_pending)

    async def stream_info(self, stream: str) -> Any:
        return SimpleNamespace(state=SimpleNamespace(messages=self.stream_messages))

    async def account_info(self) -> Any:
        return SimpleNamespace(storage=self.stored, limits=SimpleNamespace(max_storage=self.account_limit))


class FakeRedis:
    """``INFO memory`` as Redis answers it (the fields the check reads)."""

    def __init__(self, used: int = 1000, maxmemory: int = 0) -> None:
        self.used, self.maxmemory = used, maxmemory

    async def info(self, section: str) -> dict[str, int]:
        assert section == "memory"
        return {"used_memory": self.used, "maxmemory": self.maxmemory}


class FakeNats:
    """A connected client whose JetStream context is ``js``."""

    def __init__(self, js: FakeJetStream, connected: bool = True) -> None:
        self.js, self.is_connected = js, connected

    def jetstream(self) -> FakeJetStream:
        return self.js


def admission(js: FakeJetStream, redis: FakeRedis | None = None, **settings: Any) -> Admission:
    return Admission(FakeNats(js), redis or FakeRedis(), Settings(**settings))  # type: ignore[arg-type]


async def test_the_backlog_is_waiting_plus_delivered_unacknowledged_jobs() -> None:
    cfg = MeshConfig(max_backlog=10)
    found = await admission(FakeJetStream(pending=6, ack_pending=3)).backlog(cfg)
    assert (found.used, found.limit, found.full) == (9, 10, False)
    full = await admission(FakeJetStream(pending=6, ack_pending=4)).backlog(cfg)
    assert full.full
    # no coordinator has made its consumer yet: every job in the stream waits
    assert (await admission(FakeJetStream(pending=None, stream_messages=12)).backlog(cfg)).used == 12
    assert not (await admission(FakeJetStream(pending=10**6)).backlog(MeshConfig(max_backlog=0))).full


async def test_a_full_backlog_is_503_with_retry_after() -> None:
    with pytest.raises(ApiError) as refused:
        await admission(FakeJetStream(pending=5)).check(MeshConfig(max_backlog=5))
    assert refused.value.status == 503 and refused.value.code == "backlog_full"
    assert refused.value.headers and int(refused.value.headers["Retry-After"]) > 0
    await admission(FakeJetStream(pending=4)).check(MeshConfig(max_backlog=5))  # room: no refusal


async def test_a_nearly_full_store_is_507_naming_jetstream_and_wins_over_the_backlog() -> None:
    js = FakeJetStream(pending=5, stored=950)
    with pytest.raises(ApiError) as refused:
        await admission(js, jetstream_max_bytes=1000, storage_refuse_at=0.95).check(MeshConfig(max_backlog=5))
    assert refused.value.status == 507 and refused.value.code == "insufficient_storage"
    assert refused.value.message.startswith("jetstream:")
    roomy = admission(FakeJetStream(pending=0, stored=949), jetstream_max_bytes=1000, storage_refuse_at=0.95)
    await roomy.check(MeshConfig())


async def test_without_a_setting_the_accounts_own_limit_counts_and_none_means_no_limit() -> None:
    capped = await admission(
        FakeJetStream(pending=0, stored=10, account_limit=2000), jetstream_max_bytes=0
    ).jetstream()
    assert (capped.limit, capped.full) == (1900, False)
    free = await admission(FakeJetStream(pending=0, stored=10**12), jetstream_max_bytes=0).jetstream()
    assert (free.limit, free.full) == (0, False)


async def test_redis_near_its_maxmemory_is_507_naming_redis() -> None:
    js = FakeJetStream(pending=0)
    with pytest.raises(ApiError) as refused:
        await admission(js, FakeRedis(used=960, maxmemory=1000)).check(MeshConfig())
    assert refused.value.status == 507 and refused.value.message.startswith("redis:")
    await admission(js, FakeRedis(used=940, maxmemory=1000)).check(MeshConfig())  # under 95%
    await admission(js, FakeRedis(used=10**9, maxmemory=0)).check(MeshConfig())  # no limit anywhere
    setting = admission(js, FakeRedis(used=960, maxmemory=0), redis_max_bytes=1000)
    assert (await setting.redis_memory()).full


async def test_without_nats_the_upload_is_503_at_once() -> None:
    from actors.errors import RetryableError

    gate = Admission(FakeNats(FakeJetStream(pending=0), connected=False), FakeRedis(), Settings())  # type: ignore[arg-type]
    with pytest.raises(RetryableError, match="not connected to NATS"):
        await gate.check(MeshConfig())
