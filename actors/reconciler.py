"""The reconciler: nothing stuck, nothing orphaned. A task of every coordinator process, one leader at a time.

Every ``reconcile_period_s`` (Config DB; 0: off) the replica that takes the Redis lease (redis-py's ``Lock``)
runs one step: one bounded batch of each source (``reconcile_scan``: intents, records, vectors, objects) from
the cursor stored in Redis, and the repair of what it found (``reconcile_repairs``). So the cost of a step does
not grow with the library; a full round over a large library simply takes more periods, and a replica that
takes over after a crash resumes at the stored cursors. A step that meets an outage stores no cursor for that
source: the same batch is looked at again next period (every repair is idempotent).

``coordinator.reconcile`` (``mesh reconcile``) runs one full pass on demand, under the same lease, with its own
cursors (the periodic walk is not disturbed), and answers the repairs by kind. Keys (``P`` is the prefix):

  ``P:reconcile:lease``      the leader's lease
  ``P:reconcile:cursors``    hash: source -> the periodic walk's cursor ("" : start again)
  ``P:reconcile:last_step``  when the last periodic step ran (any replica): at most one step per period
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
import structlog
from nats.js import JetStreamContext
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from actors.adapters.copy_pairs import CopyPairs
from actors.adapters.embedder import Embedder
from actors.adapters.index_client import IndexClient
from actors.adapters.job_queue import JobQueue
from actors.adapters.object_store import ObjectStore
from actors.adapters.upload_intents import IntentTable
from actors.adapters.vector_index import VectorIndex
from actors.adapters.workflow_store import WorkflowStore
from actors.contract import MeshConfig, ReconcileReply, ReconcileRequest
from actors.errors import MeshError, PermanentError, RetryableError
from actors.reconcile_repairs import Repairer
from actors.reconcile_rules import REPAIRABLE, ConsumerFacts, Policy, policy_for
from actors.reconcile_scan import START, Finding, Inspector, Source, StreamJobs
from actors.recorder import Recorder
from actors.settings import Settings
from actors.workflow import ConfigSource

log = structlog.get_logger("reconcile")

BATCH = 200  # items per source per step (and per batch of a full pass)
LEASE_S = 60.0  # renewed after every batch; a leader that dies is replaced after this long
TICK_S = 5.0  # how often a replica looks whether a step is due (and reads the period again)

Classifies = Callable[[str], Awaitable[bool]]


def lease_key(prefix: str) -> str:
    return f"{prefix}:reconcile:lease"


def cursors_key(prefix: str) -> str:
    return f"{prefix}:reconcile:cursors"


def last_step_key(prefix: str) -> str:
    return f"{prefix}:reconcile:last_step"


def due(last_step_at: float | None, now: float, period_s: float) -> bool:
    """Whether a periodic step is due: none ran in (nearly) a period, by any replica."""
    return period_s > 0 and (last_step_at is None or now - last_step_at >= 0.9 * period_s)


class Reconciler:
    """Periodic bounded steps and on-demand full passes, one replica at a time."""

    def __init__(
        self,
        *,
        prefix: str,
        redis: aioredis.Redis,
        config: ConfigSource,
        inspector: Inspector,
        repairer: Repairer,
        batch: int = BATCH,
        lease_s: float = LEASE_S,
        classifies: Classifies | None = None,
    ) -> None:
        self.prefix, self.redis, self.config = prefix, redis, config
        self.classifies = classifies  # whether a model has a classifier (labels backfill); None: never
        self.inspector, self.repairer = inspector, repairer
        self.batch, self.lease_s = batch, lease_s
        self.token = uuid.uuid4().hex
        # not thread-local: the lease belongs to this reconciler, whichever task renews or releases it
        self._lease = Lock(redis, lease_key(prefix), timeout=lease_s, blocking=False, thread_local=False)

    async def run(self, stop: asyncio.Event) -> None:
        """A step every ``reconcile_period_s`` until ``stop`` is set; a failed step is retried next period.

        It looks every ``TICK_S`` (or period, if shorter) whether a step is due, so a change of the period in
        the Config DB takes effect at once."""
        while not stop.is_set():
            wait_s = TICK_S
            try:
                cfg = await self.config.get()
                if cfg.reconcile_period_s > 0:
                    wait_s = min(TICK_S, cfg.reconcile_period_s)
                    await self.step(cfg)
            except (MeshError, RedisError, OSError, TimeoutError) as e:
                log.warning("reconcile.step_failed", error=str(e) or type(e).__name__)
            except Exception:  # broad on purpose: a bug in one step must not end reconciling, nor the process
                log.exception("reconcile.step_crashed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait_s)

    async def step(self, cfg: MeshConfig) -> Counter[str] | None:
        """One batch of every source from its stored cursor, if this replica takes the lease and a step is
        due; the repairs by kind (None: not this replica's turn)."""
        if not due(await self._last_step(), time.time(), cfg.reconcile_period_s):
            return None  # (asked again under the lease: another replica may have stepped meanwhile)
        if not await self._take_lease():
            return None
        try:
            now = time.time()
            if not due(await self._last_step(), now, cfg.reconcile_period_s):
                return None
            await self.redis.set(last_step_key(self.prefix), str(now))
            policy, consumer = await self._policy(cfg, None)
            stored = await self.redis.hgetall(cursors_key(self.prefix))
            cursors = {_text(k): _text(v) for k, v in stored.items()}
            repairs: Counter[str] = Counter()
            for source in Source:
                batch = await self.inspector.batch(
                    source, cursors.get(source.value, START), self.batch, policy, consumer, now
                )
                repairs += await self._repair_all(batch.findings, policy)
                await self.redis.hset(cursors_key(self.prefix), source.value, batch.cursor)
                await self._lease.reacquire()
            if repairs:
                log.info("reconcile.step", repairs=dict(repairs))
            return repairs
        finally:
            await self._release()

    async def reconcile(self, req: ReconcileRequest) -> ReconcileReply:
        """``coordinator.reconcile``: one full pass over every source now; the repairs by kind."""
        started = time.perf_counter()
        if req.grace_s is not None and not 0 <= req.grace_s <= 30 * 86_400:
            raise PermanentError(f"grace_s must be 0 .. 30 days, got {req.grace_s}")
        cfg = await self.config.get()
        if not await self._take_lease(wait_s=self.lease_s):
            raise RetryableError("another reconcile pass holds the lease: try again")
        repairs: Counter[str] = Counter()
        scanned: Counter[str] = Counter()
        try:
            policy, consumer = await self._policy(cfg, req.grace_s)
            for source in Source:
                cursor = START
                while True:
                    batch = await self.inspector.batch(
                        source, cursor, self.batch, policy, consumer, time.time()
                    )
                    scanned[source.value] += batch.scanned
                    repairs += await self._repair_all(batch.findings, policy)
                    await self._lease.reacquire()
                    cursor = batch.cursor
                    if cursor == START:
                        break
        finally:
            await self._release()
        seconds = round(time.perf_counter() - started, 3)
        log.info("reconcile.pass", repairs=dict(repairs), scanned=dict(scanned), seconds=seconds)
        return ReconcileReply(
            repairs={k.value: repairs.get(k.value, 0) for k in REPAIRABLE},
            scanned={s.value: scanned.get(s.value, 0) for s in Source},
            seconds=seconds,
        )

    async def _last_step(self) -> float | None:
        last = await self.redis.get(last_step_key(self.prefix))
        return float(last) if last else None

    async def _policy(self, cfg: MeshConfig, grace_s: float | None) -> tuple[Policy, ConsumerFacts]:
        consumer = await self.inspector.jobs.facts()
        labelled = await self.classifies(cfg.active_model) if self.classifies else False
        return policy_for(cfg, consumer, grace_s=grace_s, labelled=labelled), consumer

    async def _repair_all(self, findings: list[Finding], policy: Policy) -> Counter[str]:
        """Repair each finding; a refused repair (a 4xx: e.g. a stored vector the index no longer takes) is
        logged and skipped, an outage (``RetryableError``) ends the batch for the next period."""
        done: Counter[str] = Counter()
        for f in findings:
            if f.kind not in REPAIRABLE:
                continue
            try:
                if await self.repairer.repair(f, policy):
                    done[f.kind.value] += 1
            except PermanentError as e:
                log.warning(
                    "reconcile.repair_refused", kind=f.kind.value, image_id=f.image_id, error=e.message
                )
        return done

    async def _take_lease(self, wait_s: float = 0.0) -> bool:
        if wait_s > 0:
            return bool(await self._lease.acquire(blocking=True, blocking_timeout=wait_s, token=self.token))
        return bool(await self._lease.acquire(blocking=False, token=self.token))

    async def _release(self) -> None:
        """Give the lease up; one that expired or can not be reached meanwhile expires by itself."""
        with contextlib.suppress(LockError, RedisError, OSError):
            await self._lease.release()


def reconciler_for(
    settings: Settings,
    *,
    js: JetStreamContext,
    queue: JobQueue | None = None,
    redis: aioredis.Redis,
    config: ConfigSource,
    store: WorkflowStore,
    recorder: Recorder,
    vectors: VectorIndex,
    objects: ObjectStore,
    index: IndexClient,
    embedder: Embedder | None = None,
    copies: CopyPairs | None = None,
) -> Reconciler:
    """The coordinator's reconciler over the clients the process has opened (none is closed here)."""
    intents = IntentTable(redis, settings.redis_prefix)
    inspector = Inspector(
        records=store,
        vectors=vectors,
        objects=objects,
        intents=intents,
        jobs=StreamJobs(js, settings.stream, settings.consumer),
    )
    repairer = Repairer(
        store=store,
        recorder=recorder,
        queue=queue or JobQueue(js),  # the engine's (JetStream's or Temporal's)
        js=js,
        index=index,
        objects=objects,
        intents=intents,
        copies=copies,
    )
    return Reconciler(
        prefix=settings.redis_prefix,
        redis=redis,
        config=config,
        inspector=inspector,
        repairer=repairer,
        classifies=embedder.classifies if embedder is not None else None,
    )


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


__all__ = [
    "BATCH",
    "LEASE_S",
    "Reconciler",
    "cursors_key",
    "due",
    "last_step_key",
    "lease_key",
    "reconciler_for",
]
