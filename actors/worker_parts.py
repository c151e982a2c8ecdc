"""What runs the image workflow under either engine, wired once: the JetStream coordinator
(``actors/coordinator.py``) and the Temporal worker (``actors/temporal_worker.py``) differ only in how jobs
reach ``Pipeline.process``.

``open_parts`` opens the clients (Redis, Triton, the object store, the Config DB watch) and builds the
pipeline, the operators' replay, the reconciler, the copy checker and the model switch over the engine's job
queue. ``serve`` answers the coordinator's NATS service (``coordinator.status``, ``coordinator.reprocess``,
``coordinator.reconcile``, ``models.switch``) and runs the background tasks beside the engine's own loop
until SIGTERM. The helpers ``beating`` (periodic heartbeats while a job runs) serve both engines too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from actors import contract, model_switch
from actors.adapters.config_client import ConfigClient
from actors.adapters.copy_pairs import CopyPairs
from actors.adapters.embedder import Embedder
from actors.adapters.events import Events
from actors.adapters.index_client import IndexClient
from actors.adapters.job_queue import JobQueue
from actors.adapters.object_store import ObjectStore
from actors.adapters.redis_client import redis_client
from actors.adapters.vector_index import VectorIndex
from actors.adapters.workflow_store import WorkflowStore
from actors.contract import (
    CoordinatorStatus,
    CoordinatorStatusRequest,
    ModelSwitchRequest,
    ReconcileRequest,
    ReprocessRequest,
)
from actors.copy_check import CopyChecker
from actors.decode_budget import DecodeBudget, release_freed_memory_promptly
from actors.reconciler import Reconciler, reconciler_for
from actors.reprocess import Replay
from actors.runtime import ActorProcess, typed
from actors.settings import Settings
from actors.workflow import Pipeline

HEARTBEAT_S = 10.0  # while a job runs, its engine hears from it this often


@dataclass
class Parts:
    """Everything of the workflow but the engine's loop."""

    config: ConfigClient
    store: WorkflowStore
    pipeline: Pipeline
    replay: Replay
    reconciler: Reconciler
    checker: CopyChecker
    switcher: model_switch.ModelSwitcher


async def open_parts(
    stack: contextlib.AsyncExitStack,
    proc: ActorProcess,
    settings: Settings,
    jobs: JobQueue,
    *,
    busy: Callable[[], bool],
) -> Parts:
    """Open the clients (closed by ``stack``) and build the parts over ``jobs``; ``busy`` says jobs are in
    flight (the copy checker yields to them)."""
    config = await stack.enter_async_context(ConfigClient.from_settings(proc.nc, settings))  # a KV watch
    redis_url = settings.redis_url_for("coordinator")  # its own ACL user (ops/stack/privileges.py)
    store = WorkflowStore(redis_url, settings.redis_prefix)
    stack.push_async_callback(store.close)
    embedder = Embedder(settings.triton_grpc_url, timeout_s=settings.triton_timeout_s)
    stack.push_async_callback(embedder.close)
    vectors = VectorIndex.from_settings(settings, user="coordinator")  # read-only: which images it holds
    stack.push_async_callback(vectors.close)
    switch_redis = redis_client(redis_url)
    stack.push_async_callback(switch_redis.aclose)
    copy_pairs = CopyPairs(switch_redis, settings.redis_prefix)
    objects = await stack.enter_async_context(ObjectStore(settings, identity="coordinator"))
    pipeline = Pipeline(
        store=store,
        events=Events(proc.nc),
        objects=objects,
        embedder=embedder,
        index=IndexClient(proc.nc),
        config=config,
        decode_budget=DecodeBudget(settings.decode_budget_bytes),  # every decode of every job in flight
        copy_queue=copy_pairs,  # a done image is queued for the copy checker
    )
    release_freed_memory_promptly()  # so that the process's RSS follows the decode budget
    stack.callback(pipeline.close)
    js = proc.nc.jetstream()
    reconciler = reconciler_for(  # nothing stuck, nothing orphaned (actors/reconciler.py)
        settings,
        js=js,
        queue=jobs,
        redis=switch_redis,
        config=config,
        store=store,
        recorder=pipeline.recorder,
        vectors=vectors,
        objects=objects,
        index=IndexClient(proc.nc),
        embedder=embedder,  # whether the active model labels images (the labels backfill)
        copies=copy_pairs,  # queues images whose look-alikes were never verified
    )
    checker = CopyChecker(  # verifies which look-alikes are copies, in the background (actors/copy_check.py)
        pairs=copy_pairs, records=store, neighbors=vectors, objects=objects, config=config, busy=busy
    )
    switcher = model_switch.ModelSwitcher(
        prefix=settings.redis_prefix,
        redis=switch_redis,
        jobs=jobs,
        config=config,
        store=store,
        vectors=vectors,
        embedder=embedder,
    )
    replay = Replay(store, pipeline.recorder, jobs)
    return Parts(config, store, pipeline, replay, reconciler, checker, switcher)


async def serve(
    proc: ActorProcess,
    parts: Parts,
    status: Callable[[CoordinatorStatusRequest], Awaitable[CoordinatorStatus]],
    engine: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
) -> None:
    """Answer the coordinator's NATS service and run ``engine`` (the jobs' loop) with the background tasks
    until SIGTERM; then ``stop`` is set and each drains. A task that fails ends the group (and this process:
    the supervisor restarts it)."""
    await proc.add_service(
        contract.COORDINATOR_SERVICE,
        "Runs the image workflow from durable jobs",
        {
            contract.COORDINATOR_STATUS: typed(status, CoordinatorStatusRequest),
            contract.COORDINATOR_REPROCESS: typed(parts.replay.reprocess, ReprocessRequest),
            # one full pass on demand (mesh reconcile)
            contract.COORDINATOR_RECONCILE: typed(parts.reconciler.reconcile, ReconcileRequest),
            contract.MODELS_SWITCH: typed(parts.switcher.request, ModelSwitchRequest),  # POST /models/switch
        },
    )
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(engine(stop), name="jobs")
        tg.create_task(parts.switcher.run(stop), name="model-switch")  # actors/model_switch.py
        tg.create_task(parts.reconciler.run(stop), name="reconciler")  # actors/reconciler.py
        tg.create_task(parts.checker.run(stop), name="copy-check")  # actors/copy_check.py
        await proc.stopped()
        stop.set()


@contextlib.asynccontextmanager
async def beating(
    heartbeat: Callable[[], Awaitable[None]], every_s: float = HEARTBEAT_S
) -> AsyncIterator[None]:
    """``heartbeat`` every ``every_s`` while the block runs (a slow step is not taken for a crash)."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every_s)
            await heartbeat()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
