"""The coordinator actor: pulls durable jobs from JetStream and runs the workflow for each.

Its parts, one module each: the intake (``fetching``: the durable consumer, fetching only while there is
room), the workflow (``workflow.Pipeline``, which knows nothing of JetStream), waiting out a dependency
outage in place (``outage``), what becomes of a job after an attempt (``delivery.decide``: ack, nak with
backoff, or give up to the dead letter), the operators' replay (``reprocess``) and the reconciler
(``reconciler``: periodic bounded repairs, one replica at a time, and ``coordinator.reconcile``). This module
wires them: per message it runs the pipeline through outages, sends in-progress acks while the job runs (so a
slow step is not mistaken for a crash) and carries out the delivery decision, one run per image at a time
(a job JetStream hands over again while it still runs here waits for it). A crash (kill -9) mid-job acks
nothing: JetStream redelivers after ``ack_wait``, and every step is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from functools import partial

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import Gauge

from actors import contract
from actors.adapters.job_queue import JobQueue
from actors.contract import CoordinatorStatus, CoordinatorStatusRequest, DeadLetter, ProcessJob
from actors.delivery import Action, Decision, decide
from actors.errors import MeshError
from actors.fetching import NATS_ERRORS, Slots, ensure_consumer, fetch_jobs
from actors.outage import OUTAGE_POLICY, OutagePolicy, through_outages
from actors.recorder import job_provenance, recording
from actors.runtime import ActorProcess
from actors.settings import Settings
from actors.streams import coordinator_consumer
from actors.worker_parts import beating, open_parts, serve
from actors.workflow import ConfigSource, Pipeline

log = structlog.get_logger("coordinator")

ACK_WAIT_S = 30.0
GIVE_UP_RETRY_S = 5.0  # the error could not be recorded: deliver the job again after this long
PENDING = Gauge("mesh_jobs_pending", "Jobs waiting in the coordinator's durable consumer")


class Coordinator:
    """The JetStream side of the workflow: fetch, run ``Pipeline.process``, ack / nak / dead-letter."""

    def __init__(
        self,
        settings: Settings,
        js: JetStreamContext,
        pipeline: Pipeline,
        config: ConfigSource,
        *,
        outage: OutagePolicy = OUTAGE_POLICY,
    ) -> None:
        self.settings = settings
        self.js = js
        self.jobs = JobQueue(js)  # dead letters
        self.pipeline = pipeline
        self.config = config
        self.outage = outage
        self.slots = Slots()
        self._image_locks: dict[str, asyncio.Lock] = {}  # one run per image at a time
        self._image_messages: Counter[str] = Counter()  # the messages holding or awaiting each lock
        self.processed = 0
        self.failed = 0
        self.consumer_max_deliver = 1_000

    @property
    def in_flight(self) -> int:
        return self.slots.in_use

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and process jobs until ``stop`` is set, then wait for the jobs in flight."""
        cfg = await self.config.get()
        consumer = coordinator_consumer(self.settings, cfg.max_deliver, ACK_WAIT_S)
        info = await ensure_consumer(self.js, self.settings.stream, consumer)
        # an older consumer may allow fewer deliveries than the config: never wait for one that won't come
        self.consumer_max_deliver = info.config.max_deliver or cfg.max_deliver
        sub = await self.js.pull_subscribe_bind(durable=self.settings.consumer, stream=self.settings.stream)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch_pending(stop))
                tg.create_task(self.slots.wake_on(stop))
                async for msg in fetch_jobs(sub, self.slots, self._concurrency, stop):
                    tg.create_task(self._handle_in_slot(msg))
        finally:
            # a pull subscription left open makes the connection's drain wait for its fetch queue (10 s on exit)
            with contextlib.suppress(*NATS_ERRORS):
                await sub.unsubscribe()
        log.info("coordinator.drained", processed=self.processed, failed=self.failed)

    async def _concurrency(self) -> int:
        return (await self.config.get()).coordinator_concurrency

    async def handle(self, msg: Msg) -> None:
        """Process one delivered job and settle its message; never raises (a raise would end the fetching)."""
        try:
            await self._process(msg)
        except Exception:  # broad on purpose: a task that raises ends the TaskGroup and every job in flight
            log.exception("job.unhandled")  # nothing was settled: JetStream redelivers it after ack_wait

    async def _handle_in_slot(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        finally:
            await self.slots.release()

    async def _process(self, msg: Msg) -> None:
        try:
            job = contract.decode(msg.data, ProcessJob)
        except msgspec.DecodeError as e:  # a ValidationError is a DecodeError too
            log.error("job.malformed", error=str(e))
            await _settle(msg.term(), "term")
            return
        delivered = msg.metadata.num_delivered
        cfg = await self.config.get()
        heartbeat = partial(_in_progress, msg)
        # every history entry of this delivery says so: the job's cause and attempt, the delivery, the job's seq
        why = job_provenance(job, delivered, msg.metadata.sequence.stream)
        with recording(why):
            async with beating(heartbeat), self._one_run_at_a_time(job.image_id):
                try:
                    attempt = partial(self.pipeline.process, job, heartbeat)
                    await through_outages(
                        attempt, heartbeat=heartbeat, policy=self.outage, image_id=job.image_id
                    )
                    error: Exception | None = None
                except Exception as e:  # broad on purpose: the delivery policy decides, a bug included
                    error = e
                decision = decide(
                    error,
                    delivered=delivered,
                    max_deliver=min(cfg.max_deliver, self.consumer_max_deliver),
                    backoff_s=cfg.backoff_s,
                )
                if decision.crashed:  # a bug: its traceback, then the policy's retry or dead letter
                    log.error("job.crashed", image_id=job.image_id, delivery=delivered, exc_info=error)
                await self._carry_out(msg, job, decision, delivered)

    @contextlib.asynccontextmanager
    async def _one_run_at_a_time(self, image_id: str) -> AsyncIterator[None]:
        """One run of an image's job at a time in this process. JetStream can hand over a job again while it
        still runs here: a nats-server restarted after a crash may have lost the delivery from its consumer
        state, and redelivers the job with the same delivery number. The copy waits (its own in-progress
        acks keep it) and then finds the image done: one upsert and one ``done`` entry, not two."""
        lock = self._image_locks.setdefault(image_id, asyncio.Lock())
        self._image_messages[image_id] += 1
        try:
            async with lock:
                yield
        finally:
            self._image_messages[image_id] -= 1
            if not self._image_messages[image_id]:
                del self._image_messages[image_id], self._image_locks[image_id]

    async def _carry_out(self, msg: Msg, job: ProcessJob, decision: Decision, delivered: int) -> None:
        if decision.action is Action.ACK:
            await _settle(msg.ack(), "ack")
            self.processed += 1
        elif decision.action is Action.GIVE_UP:
            await self._give_up(msg, job, decision, delivered)
        else:  # RETRY (WAIT is over once the outage budget is spent: JetStream's redelivery takes over)
            log.info(
                "job.retry",
                image_id=job.image_id,
                trace_id=job.trace_id,
                delivery=delivered,
                error=decision.reason,
                delay_s=decision.delay_s,
            )
            await _settle(msg.nak(delay=decision.delay_s), "nak")

    async def _give_up(self, msg: Msg, job: ProcessJob, decision: Decision, delivered: int) -> None:
        """Record ``error``, publish the job on the dead-letter subject, and stop its deliveries."""
        code, reason = decision.code, decision.reason
        try:
            await self.pipeline.fail(job, code, reason)
            await self.jobs.dead_letter(DeadLetter(job=job, code=code, reason=reason, deliveries=delivered))
        except (MeshError, *NATS_ERRORS) as e:  # could not record it: let JetStream deliver it again later
            log.warning("job.give_up_failed", image_id=job.image_id, error=str(e))
            await _settle(msg.nak(delay=GIVE_UP_RETRY_S), "nak")
            return
        self.failed += 1
        await _settle(msg.term(), "term")

    async def _pending(self) -> int | None:
        """Jobs in the durable consumer not yet acked (None: JetStream does not answer)."""
        try:
            info = await self.js.consumer_info(self.settings.stream, self.settings.consumer)
        except NATS_ERRORS:
            return None
        return info.num_pending + info.num_ack_pending

    async def _watch_pending(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            pending = await self._pending()
            if pending is not None:
                PENDING.set(pending)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=5)

    async def status(self, _: CoordinatorStatusRequest) -> CoordinatorStatus:
        return CoordinatorStatus(
            in_flight=self.in_flight,
            processed=self.processed,
            failed=self.failed,
            pending=await self._pending() or 0,
        )


async def _in_progress(msg: Msg) -> None:
    """Tell JetStream the job is still being worked on (it would redeliver it after ``ack_wait``)."""
    with contextlib.suppress(*NATS_ERRORS):
        await msg.in_progress()


async def _settle(op: Awaitable[None], what: str) -> None:
    """Ack, nak or term; if NATS is away the job is simply delivered again (steps are idempotent)."""
    try:
        await op
    except NATS_ERRORS as e:
        log.warning("job.settle_failed", op=what, error=str(e))


async def main(settings: Settings) -> None:
    """Run the coordinator until SIGTERM: finish the jobs in flight, then close everything it opened."""
    async with contextlib.AsyncExitStack() as stack:
        proc = await stack.enter_async_context(
            ActorProcess("coordinator", settings, settings.coordinator_http_port)
        )
        js = proc.nc.jetstream()
        coordinator: Coordinator | None = None
        parts = await open_parts(
            stack,
            proc,
            settings,
            JobQueue(js),
            busy=lambda: coordinator is not None and coordinator.in_flight > 0,
        )
        coordinator = Coordinator(settings, js, parts.pipeline, parts.config)
        await serve(proc, parts, coordinator.status, coordinator.run)
