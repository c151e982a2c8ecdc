"""The coordinator actor: pulls durable jobs from JetStream and runs the workflow for each.

Delivery rules (JetStream durable pull consumer, explicit ack):
- success: ack.
- a retryable error (a dependency down, the object not visible yet): nak with the configured backoff, until the
  consumer's ``max_deliver``; the last delivery records ``error`` and dead-letters the job.
- a permanent error (undecodable bytes): ``error`` with the reason at once, dead-letter, ack.
- a crash (kill -9) mid-job: nothing is acked, JetStream redelivers after ``ack_wait``; steps are idempotent.
While a job runs it sends in-progress acks so a slow step is not mistaken for a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial

import redis.asyncio as aioredis
import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, ConsumerInfo
from prometheus_client import Gauge

from actors import contract, model_switch
from actors.adapters.config_client import ConfigClient, mesh_config_defaults
from actors.adapters.embedder import Embedder
from actors.adapters.events import Events
from actors.adapters.index_client import IndexClient
from actors.adapters.object_store import ObjectMissing, ObjectStore
from actors.adapters.vector_index import VectorIndex
from actors.adapters.workflow_store import WorkflowStore
from actors.contract import (
    CoordinatorStatus,
    CoordinatorStatusRequest,
    DeadLetter,
    ProcessJob,
    ReprocessReply,
    ReprocessRequest,
    Status,
)
from actors.errors import PermanentError, RetryableError
from actors.runtime import ActorProcess, typed
from actors.settings import Settings
from actors.streams import coordinator_consumer
from actors.workflow import Pipeline

log = structlog.get_logger("coordinator")

ACK_WAIT_S = 30.0
OUTAGE_WAIT_S = 600.0  # how long a job waits in place for a down dependency before JetStream redelivers it
HEARTBEAT_S = 10.0
IN_FLIGHT = Gauge("mesh_jobs_in_flight", "Jobs this coordinator is working on")
PENDING = Gauge("mesh_jobs_pending", "Jobs waiting in the coordinator's durable consumer")


class Coordinator:
    """The JetStream side of the workflow: fetch, run ``Pipeline.process``, ack / nak / dead-letter."""

    def __init__(
        self, settings: Settings, js: JetStreamContext, pipeline: Pipeline, config: ConfigClient
    ) -> None:
        self.settings = settings
        self.js = js
        self.pipeline = pipeline
        self.config = config
        self.in_flight = 0
        self.processed = 0
        self.failed = 0
        self.consumer_max_deliver = 1_000
        self._slots = asyncio.Condition()

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and process jobs until ``stop`` is set, then wait for the jobs in flight."""
        cfg = await self.config.get()
        consumer = coordinator_consumer(self.settings, cfg.max_deliver, ACK_WAIT_S)
        info = await self._ensure_consumer(consumer)
        # an older consumer may allow fewer deliveries than the config: never wait for one that won't come
        self.consumer_max_deliver = info.config.max_deliver or cfg.max_deliver
        sub = await self.js.pull_subscribe_bind(durable=self.settings.consumer, stream=self.settings.stream)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_pending(stop))
            while not stop.is_set():
                limit = max(1, (await self.config.get()).coordinator_concurrency)
                async with self._slots:
                    await self._slots.wait_for(partial(self._has_slot, limit, stop))
                if stop.is_set():
                    break
                try:
                    msgs = await sub.fetch(limit - self.in_flight, timeout=1.0)
                except (NatsTimeoutError, TimeoutError):
                    continue
                except Exception as e:  # NATS down or restarting: keep trying, the client reconnects
                    log.warning("fetch.failed", error=str(e))
                    await asyncio.sleep(1)
                    continue
                for msg in msgs:
                    self.in_flight += 1
                    IN_FLIGHT.inc()
                    tg.create_task(self._handle(msg))
        # a pull subscription left open makes the connection's drain wait for its fetch queue (10 s on exit)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        log.info("coordinator.drained", processed=self.processed, failed=self.failed)

    def _has_slot(self, limit: int, stop: asyncio.Event) -> bool:
        return self.in_flight < limit or stop.is_set()

    async def _ensure_consumer(self, consumer: ConsumerConfig) -> ConsumerInfo:
        """Create the durable consumer, or bring an existing one to the config's delivery policy."""
        for attempt in range(60):
            try:
                return await self.js.add_consumer(self.settings.stream, consumer)
            except Exception as e:
                log.warning("consumer.create_failed", error=str(e), attempt=attempt)
                await asyncio.sleep(1)
        raise RuntimeError("could not create the coordinator's durable consumer")

    async def _handle(self, msg: Msg) -> None:
        try:
            await self._process(msg)
        finally:
            self.in_flight -= 1
            IN_FLIGHT.dec()
            async with self._slots:
                self._slots.notify_all()

    async def _process(self, msg: Msg) -> None:
        try:
            job = contract.decode(msg.data, ProcessJob)
        except Exception as e:
            log.error("job.malformed", error=str(e))
            await msg.term()
            return
        delivered = msg.metadata.num_delivered
        cfg = await self.config.get()
        log_ = log.bind(image_id=job.image_id, trace_id=job.trace_id, delivery=delivered)

        async def heartbeat() -> None:
            with contextlib.suppress(Exception):
                await msg.in_progress()

        beats = asyncio.create_task(self._beat(heartbeat))
        max_deliver = min(cfg.max_deliver, self.consumer_max_deliver)
        try:
            await self._process_through_outages(job, heartbeat)
            await msg.ack()
            self.processed += 1
        except PermanentError as e:
            await self._give_up(msg, job, e.code, e.message, delivered)
        except RetryableError as e:
            if delivered >= max_deliver:
                await self._give_up(msg, job, e.code, f"gave up after {delivered} deliveries: {e}", delivered)
            else:
                delay = cfg.backoff_s[min(delivered - 1, len(cfg.backoff_s) - 1)]
                log_.info("job.retry", error=str(e), delay_s=delay)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=delay)
        except Exception as e:  # a bug: let JetStream redeliver it, then dead-letter at max_deliver
            log_.exception("job.crashed")
            if delivered >= max_deliver:
                await self._give_up(msg, job, "internal", f"{type(e).__name__}: {e}", delivered)
            else:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=cfg.backoff_s[0])
        finally:
            beats.cancel()

    async def _process_through_outages(self, job: ProcessJob, heartbeat) -> None:  # type: ignore[no-untyped-def]
        """Run the job; while a shared dependency (Triton, Redis, S3, the indexer) is down, wait in place.

        An outage is not the job's fault, so it must not spend the job's deliveries: the job keeps its delivery
        (in-progress acks), and since every slot waits, the coordinator stops fetching (back-pressure). Only
        job-specific trouble (its object missing) and outages longer than ``OUTAGE_WAIT_S`` go back to
        JetStream's redelivery with backoff.
        """
        deadline = asyncio.get_running_loop().time() + OUTAGE_WAIT_S
        delay = 0.5
        while True:
            try:
                await self.pipeline.process(job, heartbeat)
                return
            except ObjectMissing:
                raise
            except RetryableError as e:
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise
                log.info("job.waiting_for_dependency", image_id=job.image_id, error=str(e), delay_s=delay)
                await heartbeat()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _beat(self, heartbeat) -> None:  # type: ignore[no-untyped-def]
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await heartbeat()

    async def _give_up(self, msg: Msg, job: ProcessJob, code: str, reason: str, delivered: int) -> None:
        """Record ``error``, publish the job on the dead-letter subject, and stop its deliveries."""
        try:
            await self.pipeline.fail(job, code, reason)
            dead = DeadLetter(job=job, code=code, reason=reason, deliveries=delivered)
            await self.js.publish(
                contract.DEAD_SUBJECT,
                contract.encode(dead),
                headers={contract.MSG_ID_HEADER: f"dead:{contract.job_msg_id(job.image_id, job.attempt)}"},
            )
        except Exception as e:  # could not record it: let JetStream deliver it again later
            log.warning("job.give_up_failed", image_id=job.image_id, error=str(e))
            with contextlib.suppress(Exception):
                await msg.nak(delay=5)
            return
        self.failed += 1
        await msg.term()

    async def _watch_pending(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                info = await self.js.consumer_info(self.settings.stream, self.settings.consumer)
                PENDING.set(info.num_pending + info.num_ack_pending)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=5)

    # --- service endpoints ---------------------------------------------------------------------------------
    async def status(self, _: CoordinatorStatusRequest) -> CoordinatorStatus:
        pending = 0
        with contextlib.suppress(Exception):
            info = await self.js.consumer_info(self.settings.stream, self.settings.consumer)
            pending = info.num_pending + info.num_ack_pending
        return CoordinatorStatus(
            in_flight=self.in_flight, processed=self.processed, failed=self.failed, pending=pending
        )

    async def reprocess(self, req: ReprocessRequest) -> ReprocessReply:
        """Publish fresh jobs for these images (or every errored one): the operators' replay."""
        store = self.pipeline.store
        ids = list(req.image_ids)
        if req.all_errored:
            ids += await store.ids_in_status(Status.ERROR)
        requeued: list[str] = []
        for image_id in dict.fromkeys(ids):
            rec = await store.get(image_id)
            if rec is None:
                continue
            job = ProcessJob(
                image_id=rec.image_id,
                object_key=rec.object_key,
                sha256=rec.sha256,
                trace_id=rec.trace_id,
                attempt=rec.attempt + 1,
            )
            await store.update(image_id, attempt=job.attempt)
            was_error = rec.status == Status.ERROR
            if was_error:
                # queued again: a client polling the image sees the replay at once, not the old error
                await self.pipeline.requeued(job)
            try:
                await self.js.publish(
                    contract.JOBS_SUBJECT,
                    contract.encode(job),
                    headers={contract.MSG_ID_HEADER: contract.job_msg_id(job.image_id, job.attempt)},
                )
            except Exception:
                if was_error:  # nothing was queued: the error stands, the operator can replay again
                    await self.pipeline.set_error(job, rec.error)
                raise
            requeued.append(image_id)
        log.info("reprocess.requeued", count=len(requeued))
        return ReprocessReply(requeued=requeued)


async def main(settings: Settings) -> None:
    async with ActorProcess("coordinator", settings, settings.coordinator_http_port) as proc:
        config = ConfigClient(proc.nc, fallback=mesh_config_defaults(settings))
        store = WorkflowStore(settings.redis_server_url, settings.redis_prefix)
        embedder = Embedder(settings.triton_grpc_url, timeout_s=settings.triton_timeout_s)
        vectors = VectorIndex.from_settings(settings)  # read-only here: which images the new index holds
        switch_redis = aioredis.Redis.from_url(settings.redis_server_url, socket_timeout=5)
        async with ObjectStore(settings) as objects:
            pipeline = Pipeline(
                store=store,
                events=Events(proc.nc),
                objects=objects,
                embedder=embedder,
                index=IndexClient(proc.nc),
                config=config,
            )
            coordinator = Coordinator(settings, proc.nc.jetstream(), pipeline, config)
            await proc.add_service(
                contract.COORDINATOR_SERVICE,
                "Runs the image workflow from durable jobs",
                {
                    contract.COORDINATOR_STATUS: typed(coordinator.status, CoordinatorStatusRequest),
                    contract.COORDINATOR_REPROCESS: typed(coordinator.reprocess, ReprocessRequest),
                },
            )
            stop = asyncio.Event()
            switcher = model_switch.ModelSwitcher(
                prefix=settings.redis_prefix,
                redis=switch_redis,
                js=proc.nc.jetstream(),
                config=ConfigClient(proc.nc, ttl_s=0.5, fallback=mesh_config_defaults(settings)),
                store=store,
                vectors=vectors,
                embedder=embedder,
            )
            runner = asyncio.create_task(coordinator.run(stop))
            switching = asyncio.create_task(switcher.run(stop))  # model switches (actors/model_switch.py)
            waiter = asyncio.create_task(proc.stopped())
            await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            async with coordinator._slots:
                coordinator._slots.notify_all()
            await runner  # finish the jobs in flight (drain), or raise what broke the loop
            await switching
            waiter.cancel()
            pipeline.close()
        await embedder.close()
        await store.close()
        await vectors.close()
        await switch_redis.aclose()
