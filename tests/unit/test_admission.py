"""The admission rules (``gateway/admission.py``) on numbers a fake JetStream gives: which refusal wins, what
counts as the backlog, where the store's limit comes from. The real servers' numbers: tests/e2e/test_admission.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from nats.js.errors import NotFoundError

from actors.contract import MeshConfig
from actors.errors import RetryableError
from actors.settings import Settings
from gateway.admission import Admission, StoreUsage
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


class FakeObjects:
    """The object store's listing: the bucket's bytes, how often it was listed, and a failure or a wait on
    demand (``release`` is set when a listing may answer)."""

    def __init__(self, total: int = 0) -> None:
        self.total, self.listings, self.fail = total, 0, False
        self.release = asyncio.Event()
        self.release.set()

    async def total_bytes(self) -> int:
        self.listings += 1
        await self.release.wait()
        if self.fail:
            raise RetryableError("object store list failed: HTTP 503")
        return self.total


def admission(
    js: FakeJetStream, redis: FakeRedis | None = None, objects: FakeObjects | None = None, **settings: Any
) -> Admission:
    return Admission(FakeNats(js), redis or FakeRedis(), Settings(**settings), objects)  # type: ignore[arg-type]


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
    gate = Admission(FakeNats(FakeJetStream(pending=0), connected=False), FakeRedis(), Settings())  # type: ignore[arg-type]
    with pytest.raises(RetryableError, match="not connected to NATS"):
        await gate.check(MeshConfig())


# --- the object store: a listing's total, kept, plus what this gateway admitted since ---------------------
STORE = {"object_store_max_bytes": 1000, "storage_refuse_at": 0.95}


async def test_an_object_store_at_its_limit_is_507_naming_it_and_room_below_it_is_not() -> None:
    js = FakeJetStream(pending=0)
    with pytest.raises(ApiError) as refused:
        await admission(js, objects=FakeObjects(950), **STORE).check(MeshConfig())
    assert refused.value.status == 507 and refused.value.code == "insufficient_storage"
    assert refused.value.message == (
        "object_store: the image store holds 950 bytes, at its limit of 950; "
        "uploads resume when an operator makes room"
    )
    await admission(js, objects=FakeObjects(949), **STORE).check(MeshConfig())  # under 95%: room
    found = await admission(js, objects=FakeObjects(949), **STORE).usage(MeshConfig())
    assert (found["object_store"].used, found["object_store"].limit) == (949, 950)


async def test_without_an_object_store_limit_nothing_is_listed() -> None:
    objects = FakeObjects(10**12)
    gate = admission(FakeJetStream(pending=0), objects=objects)  # object_store_max_bytes: 0
    await gate.check(MeshConfig(), size=10**9)
    found = await gate.usage(MeshConfig())
    assert (found["object_store"].used, found["object_store"].limit) == (0, 0)
    assert objects.listings == 0
    with pytest.raises(ValueError, match="object store"):
        admission(FakeJetStream(pending=0), **STORE)  # a limit, and nothing to measure it with


async def test_admitted_upload_bytes_count_until_the_next_listing() -> None:
    js, objects = FakeJetStream(pending=0), FakeObjects(900)
    gate = admission(js, objects=objects, object_store_usage_refresh_s=3600, **STORE)
    await gate.check(MeshConfig(), size=30)  # 900 listed: room
    await gate.check(MeshConfig(), size=19)  # 930: room
    assert (await gate.usage(MeshConfig()))["object_store"].used == 949
    await gate.check(MeshConfig(), size=1)  # 949: room, and now 950
    with pytest.raises(ApiError) as refused:
        await gate.check(MeshConfig(), size=1)
    assert refused.value.message.startswith("object_store: the image store holds 950 bytes")
    assert objects.listings == 1  # all from one listing
    assert (await gate.usage(MeshConfig()))["object_store"].used == 950  # a refused upload adds nothing


async def test_concurrent_checks_each_count_the_uploads_admitted_before_them() -> None:
    js, objects = FakeJetStream(pending=0), FakeObjects(900)
    gate = admission(js, objects=objects, object_store_usage_refresh_s=3600, **STORE)
    await gate.usage(MeshConfig())  # listed: 900 of 950
    # ten uploads of 20 bytes at once: all ask NATS and Redis together, then each sees those admitted before it
    found = await asyncio.gather(
        *(gate.check(MeshConfig(), size=20) for _ in range(10)), return_exceptions=True
    )
    assert [f is None for f in found].count(True) == 3  # at 900, 920, 940; then 960 is over the limit
    assert all(isinstance(f, ApiError) and f.status == 507 for f in found if f is not None)
    assert (await gate.usage(MeshConfig()))["object_store"].used == 960


async def test_a_listing_is_kept_for_the_refresh_interval_and_replaces_what_was_admitted_before() -> None:
    now = [0.0]
    objects = FakeObjects(100)
    usage = StoreUsage(objects.total_bytes, 950, refresh_s=30, clock=lambda: now[0])
    assert (await usage.usage()).used == 100
    usage.admit(50)
    objects.total = 400  # other gateways (and the pipeline) store meanwhile
    now[0] = 29.9
    assert (await usage.usage()).used == 150 and objects.listings == 1  # kept: not listed again
    now[0] = 30.0
    objects.total = 160  # the listing sees this gateway's 50 bytes (and what the others stored)
    assert (await usage.usage()).used == 160 and objects.listings == 2  # listed again: the 50 are in it
    usage.admit(5)
    assert usage.current().used == 165


async def settle() -> None:
    """Let every task that can run, run (a listing starts, the checks reach their wait)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_one_listing_at_a_time_while_concurrent_checks_use_the_kept_figure() -> None:
    now = [0.0]
    objects = FakeObjects(100)
    usage = StoreUsage(objects.total_bytes, 950, refresh_s=30, clock=lambda: now[0])
    objects.release.clear()
    first = [asyncio.create_task(usage.usage()) for _ in range(5)]  # nothing kept yet: all wait for one
    await settle()
    assert objects.listings == 1 and not any(t.done() for t in first)
    objects.release.set()
    assert [u.used for u in await asyncio.gather(*first)] == [100] * 5 and objects.listings == 1

    now[0] = 31.0  # stale: the first check lists again and waits; the others answer from the kept figure
    objects.total = 300
    objects.release.clear()
    lister = asyncio.create_task(usage.usage())
    await settle()
    usage.admit(7)  # admitted while the listing runs: added to it too (the listing may not have seen it)
    meanwhile = await asyncio.gather(*(usage.usage() for _ in range(5)))
    assert [u.used for u in meanwhile] == [107] * 5 and objects.listings == 2 and not lister.done()
    objects.release.set()
    assert (await lister).used == 307 and objects.listings == 2


async def test_a_failed_listing_is_retryable_and_the_next_check_lists_again() -> None:
    js, objects = FakeJetStream(pending=0), FakeObjects(100)
    objects.fail = True
    gate = admission(js, objects=objects, object_store_usage_refresh_s=3600, **STORE)
    with pytest.raises(RetryableError, match="object store list failed"):
        await gate.check(MeshConfig(), size=10)
    objects.fail = False
    await gate.check(MeshConfig(), size=10)  # not blocked: listed again, and room
    assert objects.listings == 2
    assert (await gate.usage(MeshConfig()))["object_store"].used == 110
