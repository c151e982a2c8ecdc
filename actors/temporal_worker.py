"""The Temporal worker: runs the image workflow (``actors/temporal_flow.py``) in place of the JetStream
coordinator when ``MESH_WORKFLOW_ENGINE=temporal``.

Its activities are the coordinator's steps over the same ``Pipeline`` (``actors/workflow.py``): ``mesh.plan``,
``mesh.embed``, ``mesh.index`` and ``mesh.finish`` for a new image, ``mesh.process`` for a re-embed or a job
with nothing left to do, and ``mesh.give_up`` (the ``error`` record and the dead letter on
``images.jobs.dead``). Each runs through dependency outages in place (``actors/outage.py``) and heartbeats
meanwhile, as the coordinator's in-progress acks do; a failed attempt is judged by the coordinator's own
delivery policy (``actors/delivery.py``): a permanent error gives up at once, anything else retries after the
Config DB's ``backoff_s`` delay until ``max_deliver`` attempts are spent.

Everything else the coordinator does runs here as well, over Temporal's job queue
(``actors/adapters/temporal_jobs.py``): the NATS service (``coordinator.status``, ``coordinator.reprocess``,
``coordinator.reconcile``, ``models.switch``), the reconciler, the copy checker and the model switch
(``actors/worker_parts.py``). The worker uses the coordinator's NATS, Redis and S3 identities.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import structlog
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from actors import contract, temporal_flow
from actors.adapters.job_queue import JobQueue
from actors.adapters.temporal_jobs import TemporalJobQueue, connect_temporal
from actors.contract import CoordinatorStatus, CoordinatorStatusRequest, DeadLetter, ProcessJob
from actors.delivery import Action, decide
from actors.fetching import IN_FLIGHT
from actors.outage import OUTAGE_POLICY, OutagePolicy, through_outages
from actors.recorder import job_provenance, recording
from actors.runtime import ActorProcess
from actors.settings import Settings
from actors.worker_parts import beating, open_parts, serve
from actors.workflow import ConfigSource, Embedded, Pipeline

log = structlog.get_logger("temporal_worker")

T = TypeVar("T")


class Activities:
    """The workflow's activities over one ``Pipeline``; counts what ``coordinator.status`` reports."""

    def __init__(
        self,
        pipeline: Pipeline,
        config: ConfigSource,
        jobs: JobQueue,
        *,
        outage: OutagePolicy = OUTAGE_POLICY,
    ) -> None:
        self.pipeline, self.config, self.jobs, self.outage = pipeline, config, jobs, outage
        self.in_flight = 0
        self.processed = 0
        self.failed = 0

    def all(self) -> list[Callable[..., Awaitable[object]]]:
        return [self.retry_policy, self.plan, self.embed, self.index, self.finish, self.process, self.give_up]

    @activity.defn(name=temporal_flow.RETRY_POLICY)
    async def retry_policy(self) -> int:
        """The attempts an image's step gets: the Config DB's ``max_deliver``."""
        return (await self.config.get()).max_deliver

    @activity.defn(name=temporal_flow.PLAN)
    async def plan(self, job: str) -> str:
        return await self._run(job, lambda j, _: self.pipeline.plan(j))

    @activity.defn(name=temporal_flow.EMBED)
    async def embed(self, job: str) -> str:
        async def step(j: ProcessJob, beat: Callable[[], Awaitable[None]]) -> str:
            rec = await self.pipeline.store.get(j.image_id)
            if rec is None:  # deleted meanwhile: the index and finish steps find nothing to do either
                return contract.encode(Embedded([], {}, {}, {}, 0, 0.0)).decode()
            embedded, _ = await self.pipeline.embed_new(j, rec, beat)
            return contract.encode(embedded).decode()

        return await self._run(job, step)

    @activity.defn(name=temporal_flow.INDEX)
    async def index(self, job: str, embedded: str) -> str:
        done = contract.decode(embedded.encode(), Embedded)
        if not done.models:
            return "skipped"
        await self._run(job, lambda j, beat: self.pipeline.index_new(j, done, beat))
        return "indexed"

    @activity.defn(name=temporal_flow.FINISH)
    async def finish(self, job: str, embedded: str) -> str:
        done = contract.decode(embedded.encode(), Embedded)
        if not done.models:
            return "skipped"
        outcome = await self._run(job, lambda j, _: self.pipeline.finish_new(j, done))
        self.processed += 1
        return outcome

    @activity.defn(name=temporal_flow.PROCESS)
    async def process(self, job: str) -> str:
        outcome = await self._run(job, self.pipeline.process)
        self.processed += 1
        return outcome

    @activity.defn(name=temporal_flow.GIVE_UP)
    async def give_up(self, job: str, code: str, reason: str, deliveries: int) -> None:
        """Record the image's ``error`` (a re-embed's: a note) and publish its dead letter."""
        pj = contract.decode(job.encode(), ProcessJob)
        with recording(job_provenance(pj, deliveries)):
            await self.pipeline.fail(pj, code, reason)
        await self.jobs.dead_letter(DeadLetter(job=pj, code=code, reason=reason, deliveries=deliveries))
        self.failed += 1

    async def _run(
        self, job: str, step: Callable[[ProcessJob, Callable[[], Awaitable[None]]], Awaitable[T]]
    ) -> T:
        """One attempt of ``step``: through outages, heartbeating, with this attempt in every history entry;
        a failure becomes the retry or the give-up the coordinator's delivery policy decides."""
        pj = contract.decode(job.encode(), ProcessJob)
        attempt = activity.info().attempt
        cfg = await self.config.get()

        async def run_step() -> T:  # a coroutine function: the outage retries await it
            return await step(pj, _heartbeat)

        self.in_flight += 1
        IN_FLIGHT.inc()  # the coordinator's gauge, on the same port: autoscalers and tests read one name
        try:
            with recording(job_provenance(pj, attempt)):
                async with beating(_heartbeat):
                    return await through_outages(
                        run_step,
                        heartbeat=_heartbeat,
                        policy=self.outage,
                        image_id=pj.image_id,
                    )
        except Exception as e:  # broad on purpose: the delivery policy decides, a bug included
            decision = decide(e, delivered=attempt, max_deliver=cfg.max_deliver, backoff_s=cfg.backoff_s)
            if decision.crashed:
                log.error("job.crashed", image_id=pj.image_id, attempt=attempt, exc_info=e)
            if decision.action is Action.GIVE_UP:
                raise ApplicationError(
                    decision.reason, attempt, type=decision.code, non_retryable=True
                ) from e
            log.info("job.retry", image_id=pj.image_id, attempt=attempt, error=decision.reason)
            delay = timedelta(seconds=decision.delay_s)
            raise ApplicationError(decision.reason, attempt, type="retry", next_retry_delay=delay) from e
        finally:
            self.in_flight -= 1
            IN_FLIGHT.dec()


async def _heartbeat() -> None:
    """Tell Temporal the step is still being worked on (it would run it again after the heartbeat timeout)."""
    activity.heartbeat()


async def _open_workflows(client: Client, task_queue: str) -> int:
    """Image workflows still running (``coordinator.status``'s ``pending``); 0 when Temporal does not answer."""
    query = (
        f"WorkflowType='{temporal_flow.WORKFLOW}' AND ExecutionStatus='Running' AND TaskQueue='{task_queue}'"
    )
    try:
        return (await asyncio.wait_for(client.count_workflows(query), 5)).count
    except Exception as e:  # broad on purpose: a status answer is better than none
        log.warning("worker.count_failed", error=f"{type(e).__name__}: {e}")
        return 0


async def main(settings: Settings) -> None:
    """Run the worker until SIGTERM: finish the activities in flight, then close everything it opened."""
    async with contextlib.AsyncExitStack() as stack:
        proc = await stack.enter_async_context(
            ActorProcess("worker", settings, settings.coordinator_http_port, nats_user="coordinator")
        )
        client = await connect_temporal(settings)  # not up yet: the process exits and is started again
        jobs = TemporalJobQueue(proc.nc.jetstream(), client, settings.temporal_task_queue)
        activities: Activities | None = None
        parts = await open_parts(
            stack, proc, settings, jobs, busy=lambda: activities is not None and activities.in_flight > 0
        )
        activities = Activities(parts.pipeline, parts.config, jobs)
        concurrency = (await parts.config.get()).coordinator_concurrency
        worker = Worker(
            client,
            task_queue=settings.temporal_task_queue,
            workflows=[temporal_flow.ImageWorkflow],
            activities=activities.all(),
            max_concurrent_activities=concurrency,
            graceful_shutdown_timeout=timedelta(seconds=20),
        )
        acts = activities

        async def status(_: CoordinatorStatusRequest) -> CoordinatorStatus:
            pending = await _open_workflows(client, settings.temporal_task_queue)
            return CoordinatorStatus(
                in_flight=acts.in_flight, processed=acts.processed, failed=acts.failed, pending=pending
            )

        async def run(stop: asyncio.Event) -> None:
            async with worker:
                log.info("worker.started", task_queue=settings.temporal_task_queue, concurrency=concurrency)
                await stop.wait()
            log.info("worker.drained", processed=acts.processed, failed=acts.failed)

        await serve(proc, parts, status, run)
