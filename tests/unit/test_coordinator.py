"""The coordinator over fakes: outages wait in place, deliveries and dead letters, the fetch loop, replay."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import nats.errors
import pytest

from actors import contract
from actors.adapters.job_queue import JobQueue
from actors.contract import (
    CoordinatorStatusRequest,
    DeadLetter,
    ErrorInfo,
    MeshConfig,
    ProcessJob,
    ReprocessRequest,
    Status,
)
from actors.coordinator import Coordinator
from actors.errors import RetryableError
from actors.outage import OutagePolicy
from actors.reprocess import Replay
from tests.unit.workflow_fakes import FakeJetStream, FakeMsg, World, error_of

QUICK = OutagePolicy(budget_s=5.0, first_delay_s=0.01, max_delay_s=0.02)
SETTINGS: Any = SimpleNamespace(stream="IMAGES", consumer="coordinator")


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    yield w
    w.close()


def coordinator(world: World, js: FakeJetStream | None = None, outage: OutagePolicy = QUICK) -> Coordinator:
    c = Coordinator(SETTINGS, js or FakeJetStream(), world.pipeline, world.config, outage=outage)  # type: ignore[arg-type]
    c.consumer_max_deliver = world.config.cfg.max_deliver
    return c


def message(job: ProcessJob, delivered: int = 1) -> FakeMsg:
    return FakeMsg(data=contract.encode(job), delivered=delivered)


# --- outages wait in place ----------------------------------------------------------------------------------
async def test_an_indexer_answering_503_makes_the_job_wait_in_place_then_end_done(world: World) -> None:
    """The indexer's Redis refuses (503) three times: the job keeps its delivery and ends ``done``."""
    world.nats.errors = ["503", "503", "503"]
    job = world.add_image()
    msg = message(job)
    coord = coordinator(world)

    await coord.handle(msg)

    assert world.nats.refused == 3 and len(world.nats.upserts) == 1
    assert msg.settled == [("ack", None)]  # no nak: no delivery spent, no dead letter
    assert msg.beats >= 3  # an in-progress ack before every wait
    rec = world.store.records[job.image_id]
    assert rec.status == Status.DONE and rec.error is None
    assert (coord.processed, coord.failed, coord.in_flight) == (1, 0, 0)


async def test_redis_down_at_the_start_of_a_job_waits_in_place_too(world: World) -> None:
    job = world.add_image()
    world.store.down = 2
    msg = message(job)
    await coordinator(world).handle(msg)
    assert msg.settled == [("ack", None)]
    assert world.store.records[job.image_id].status == Status.DONE


async def test_an_outage_longer_than_the_wait_goes_back_to_jetstream_with_backoff(world: World) -> None:
    world.nats.errors = ["503"] * 1000
    job = world.add_image()
    msg = message(job, delivered=1)
    await coordinator(world, outage=OutagePolicy(budget_s=0.05, first_delay_s=0.01, max_delay_s=0.01)).handle(
        msg
    )
    assert msg.settled == [("nak", world.config.cfg.backoff_s[0])]
    assert world.store.records[job.image_id].status != Status.ERROR


# --- deliveries, dead letters -------------------------------------------------------------------------------
async def test_a_missing_object_spends_deliveries_then_is_dead_lettered(world: World) -> None:
    js = FakeJetStream()
    coord = coordinator(world, js)
    job = world.add_image()
    del world.objects.objects[job.object_key]
    max_deliver = world.config.cfg.max_deliver

    for delivered in range(1, max_deliver):
        msg = message(job, delivered)
        await coord.handle(msg)
        assert msg.settled == [("nak", world.config.cfg.backoff_s[min(delivered, 3) - 1])]
    assert not js.on(contract.DEAD_SUBJECT)

    last = message(job, max_deliver)
    await coord.handle(last)
    assert last.settled == [("term", None)]
    rec = world.store.records[job.image_id]
    assert rec.status == Status.ERROR and error_of(rec).code == "object_missing"
    assert f"gave up after {max_deliver} deliveries" in error_of(rec).message
    [(payload, headers)] = js.on(contract.DEAD_SUBJECT)
    dead = contract.decode(payload, DeadLetter)
    assert (dead.job.image_id, dead.code, dead.deliveries) == (job.image_id, "object_missing", max_deliver)
    assert headers[contract.MSG_ID_HEADER] == f"dead:{contract.job_msg_id(job.image_id, 0)}"
    assert coord.failed == 1


async def test_an_indexer_refusal_is_permanent_at_once(world: World) -> None:
    js = FakeJetStream()
    world.nats.errors = ["400"]
    job = world.add_image()
    msg = message(job)
    await coordinator(world, js).handle(msg)
    assert msg.settled == [("term", None)]
    rec = world.store.records[job.image_id]
    assert rec.status == Status.ERROR and error_of(rec).code == "400"
    assert len(js.on(contract.DEAD_SUBJECT)) == 1


async def test_a_bug_is_retried_then_dead_lettered_as_internal(world: World, monkeypatch: Any) -> None:
    js = FakeJetStream()
    job = world.add_image()

    async def broken(*_: Any) -> str:
        raise KeyError("a bug")

    monkeypatch.setattr(world.pipeline, "process", broken)
    first = message(job, 1)
    await coordinator(world, js).handle(first)
    assert first.settled == [("nak", world.config.cfg.backoff_s[0])]
    last = message(job, world.config.cfg.max_deliver)
    await coordinator(world, js).handle(last)
    assert last.settled == [("term", None)]
    assert error_of(world.store.records[job.image_id]).code == "internal"


async def test_giving_up_while_the_error_cannot_be_recorded_delivers_it_again(world: World) -> None:
    js = FakeJetStream(fail=lambda: nats.errors.NoRespondersError())
    world.nats.errors = ["400"]
    msg = message(world.add_image())
    await coordinator(world, js).handle(msg)
    assert msg.settled == [("nak", 5.0)]


async def test_a_malformed_job_is_terminated(world: World) -> None:
    msg = FakeMsg(data=b'{"not": "a job"}')
    await coordinator(world).handle(msg)
    assert msg.settled == [("term", None)]


# --- the fetch loop -----------------------------------------------------------------------------------------
@dataclass
class FakeSub:
    queue: list[FakeMsg]
    batches: list[int] = field(default_factory=list)
    unsubscribed: bool = False

    async def fetch(self, batch: int, timeout: float) -> list[FakeMsg]:  # noqa: ASYNC109 - nats-py's signature
        if not self.queue:
            await asyncio.sleep(0.01)
            raise nats.errors.TimeoutError
        self.batches.append(batch)
        out, self.queue[:] = self.queue[:batch], self.queue[batch:]
        return out

    async def unsubscribe(self) -> None:
        self.unsubscribed = True


@dataclass
class FakeConsumerJetStream(FakeJetStream):
    sub: FakeSub = field(default_factory=lambda: FakeSub([]))
    consumers: list[Any] = field(default_factory=list)
    add_failures: int = 0

    async def add_consumer(self, stream: str, config: Any) -> Any:
        if self.add_failures:
            self.add_failures -= 1
            raise nats.errors.NoRespondersError
        self.consumers.append(config)
        return SimpleNamespace(config=config)

    async def pull_subscribe_bind(self, durable: str, stream: str) -> FakeSub:
        return self.sub

    async def consumer_info(self, stream: str, consumer: str) -> Any:
        return SimpleNamespace(num_pending=len(self.sub.queue), num_ack_pending=0)


async def test_run_fetches_only_while_it_has_room_and_drains_on_stop(world: World) -> None:
    world.config.cfg = MeshConfig(active_model="m1", coordinator_concurrency=2)
    jobs = [world.add_image(f"img{i}", seed=i) for i in range(5)]
    msgs = [message(j) for j in jobs]
    js = FakeConsumerJetStream(sub=FakeSub(list(msgs)))
    coord = coordinator(world, js)
    stop = asyncio.Event()
    runner = asyncio.create_task(coord.run(stop))
    async with asyncio.timeout(20):
        while coord.processed < len(jobs):  # noqa: ASYNC110 - polling a counter the jobs bump
            await asyncio.sleep(0.01)
    assert (await coord.status(CoordinatorStatusRequest())).processed == len(jobs)
    stop.set()
    await asyncio.wait_for(runner, 10)
    assert all(m.settled == [("ack", None)] for m in msgs)
    assert max(js.sub.batches) <= 2 and js.sub.unsubscribed
    assert js.consumers[0].max_deliver == world.config.cfg.max_deliver
    assert {world.store.records[j.image_id].status for j in jobs} == {Status.DONE}


# --- replay -------------------------------------------------------------------------------------------------
async def test_replay_requeues_an_errored_image_as_pending_with_the_next_attempt(world: World) -> None:
    js = FakeJetStream()
    err = ErrorInfo(code="object_missing", message="gone")
    job = world.add_image(status=Status.ERROR, error=err)
    replay = Replay(world.store, world.pipeline.recorder, JobQueue(js))  # type: ignore[arg-type]

    reply = await replay.reprocess(ReprocessRequest(image_ids=[job.image_id, "unknown", job.image_id]))

    assert reply.requeued == [job.image_id]
    rec = world.store.records[job.image_id]
    assert (rec.status, rec.error, rec.attempt) == (Status.PENDING, None, 1)
    [(payload, headers)] = js.on(contract.JOBS_SUBJECT)
    queued = contract.decode(payload, ProcessJob)
    assert (queued.image_id, queued.attempt) == (job.image_id, 1)
    assert headers[contract.MSG_ID_HEADER] == contract.job_msg_id(job.image_id, 1)
    assert world.events.statuses(job.image_id) == ["pending"]

    # the replayed job runs: the image ends done
    msg = message(queued)
    await coordinator(world).handle(msg)
    assert world.store.records[job.image_id].status == Status.DONE

    # every errored image
    other = world.add_image("img2", status=Status.ERROR, seed=2, error=err)
    assert (await replay.reprocess(ReprocessRequest(all_errored=True))).requeued == [other.image_id]


async def test_a_replay_that_cannot_queue_its_job_puts_the_error_back(world: World) -> None:
    js = FakeJetStream(fail=lambda: nats.errors.NoRespondersError())
    err = ErrorInfo(code="object_missing", message="gone")
    job = world.add_image(status=Status.ERROR, error=err)
    replay = Replay(world.store, world.pipeline.recorder, JobQueue(js))  # type: ignore[arg-type]
    with pytest.raises(RetryableError):
        await replay.reprocess(ReprocessRequest(image_ids=[job.image_id]))
    rec = world.store.records[job.image_id]
    assert (rec.status, rec.error) == (Status.ERROR, err)
    assert world.events.statuses(job.image_id) == ["pending", "error"]


async def test_a_job_handed_over_again_while_it_runs_waits_for_it_and_is_skipped(world: World) -> None:
    """A nats-server restarted after a crash can redeliver a running job with the same delivery number: the
    copy waits for the first run, then finds the image done. One upsert, one ``done`` entry, both acked."""
    job = world.add_image()
    first, copy = message(job), message(job)
    coord = coordinator(world)

    await asyncio.gather(coord.handle(first), coord.handle(copy))

    assert len(world.nats.upserts) == 1
    assert world.store.states(job.image_id).count("done") == 1
    assert first.settled == copy.settled == [("ack", None)]
    assert coord._image_locks == {}  # nothing kept once both are settled
