"""Switching the active model without downtime: build the new model's index in the background, then swap.

``POST /models/switch`` (through the gateway, a ``models.switch`` request served here) or an operator sets
``MeshConfig.next_model``. The switcher, a task of every coordinator process, then:

1. checks that Triton serves ``next_model`` as an image model (else: state ``failed``, ``next_model`` cleared);
2. lists the images whose record is ``done`` and publishes a re-embed job ``ProcessJob(models=[next_model])``
   for each one without a vector under ``next_model`` (``Nats-Msg-Id`` ``switch:<model>:<start>:<round>:<id>``:
   JetStream drops a repeat, from this replica or another). ``Pipeline.process`` adds the vector without
   touching the record. Meanwhile new uploads are embedded under both models (``workflow.planned_models``);
3. keeps its progress in Redis (``adapters/switch_progress.py``: state, done, total) for ``GET /models``;
4. swaps when every done image has a vector under ``next_model``, readers have had time to see ``next_model``
   (their config cache is at most 2 s old), and the images that were pending or in flight at that moment are
   done too (``drain``; at most ``DRAIN_MAX_S``): one KV write of ``active_model = next_model`` (the atomic
   swap; readers follow within their cache time, the old index answering until then), then ``next_model`` is
   cleared. An image that finished without the new vector (its job began before ``next_model`` was seen) makes
   the index incomplete again: it is re-embedded first.

Several coordinator replicas: one drives a switch at a time, holding a Redis lease (redis-py's ``Lock``,
renewed every tick; a dead holder's lease expires after ``LEASE_S``); every step is idempotent, so a replica
that takes over after a crash simply goes on. The old model's index is kept: switching back is the same
procedure and only re-embeds the images uploaded since.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterable

import redis.asyncio as aioredis
import structlog
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, LockNotOwnedError, RedisError

from actors.adapters.config_client import ConfigClient
from actors.adapters.embedder import Embedder, EmbedderException, EmbedderUnavailable
from actors.adapters.job_queue import JobQueue
from actors.adapters.switch_progress import FINISHED, Progress, SwitchProgress, SwitchState, switch_target
from actors.adapters.vector_index import VectorIndex
from actors.adapters.workflow_store import WorkflowStore
from actors.contract import Cause, MeshConfig, ModelSwitchReply, ModelSwitchRequest, Status
from actors.errors import MeshError, PermanentError, RetryableError, ServiceCallError

log = structlog.get_logger("model_switch")

TICK_S = 1.0
LEASE_S = 10.0  # a replica that dies holding the lease is replaced after this long
CONFIG_SETTLE_S = 3.0  # readers cache the config for <= 2 s: after this, every new job embeds next_model too
STALL_S = 120.0  # no progress for this long: publish the missing images' jobs again (a new round)
PUBLISH_BATCH = 64
UNFINISHED = (Status.PENDING, Status.PROCESSING, Status.EMBEDDED, Status.INDEXED)
DRAIN_MAX_S = 60.0  # how long the swap waits for the images unfinished when the new index became complete
MAX_IMAGES = 10_000_000


def lease_key(prefix: str) -> str:
    """The Redis key of the lease: whoever holds it drives the switch (``P`` is ``settings.redis_prefix``)."""
    return f"{prefix}:switch:lease"


# --- the pure decisions (unit-tested) -------------------------------------------------------------------------
def count(done_ids: Iterable[str], vector_ids: Iterable[str]) -> tuple[int, int, list[str]]:
    """``(done, total, missing)``: done images with a vector under the new model, done images, the others."""
    done_set = set(done_ids)
    missing = sorted(done_set - set(vector_ids))
    return len(done_set) - len(missing), len(done_set), missing


def drain(waiting: set[str] | None, complete: bool, unfinished: set[str]) -> set[str] | None:
    """The unfinished images (pending or in flight) the swap still waits for; None while the index is not
    complete. The first complete tick takes a snapshot; later ticks only remove from it (images that finished
    or went away), so a steady stream of uploads can not hold the swap forever. Waiting for them means an
    image accepted before the swap is processed while ``next_model`` is set: it lands in both indexes."""
    if not complete:
        return None
    return set(unfinished) if waiting is None else waiting & unfinished


def ready_to_swap(complete: bool, waiting: set[str] | None, waited_s: float, drain_max_s: float) -> bool:
    """``complete``: every done image has a vector under the new model and readers have seen ``next_model``
    (their config cache). Then the images unfinished at completion must be done too, or have been waited for
    ``drain_max_s`` (one stuck must not hold the switch forever)."""
    if not complete or waiting is None:
        return False
    return not waiting or waited_s >= drain_max_s


def stalled(last_progress_at: float, now: float, missing: int, stall_s: float = STALL_S) -> bool:
    """Images are missing and none was added for ``stall_s``: their jobs failed or were lost."""
    return missing > 0 and now - last_progress_at >= stall_s


def switch_msg_id(model: str, started_at: float, round_: int, image_id: str) -> str:
    """The JetStream de-duplication id of a switch's re-embed job (one per switch, round and image)."""
    return f"switch:{model}:{int(started_at * 1000)}:{round_}:{image_id}"


def next_model_for(requested: str, cfg: MeshConfig) -> str:
    """What a request for ``requested`` sets ``next_model`` to: the active model cancels (``""``)."""
    return "" if requested == cfg.active_model else requested


# --- the switcher -----------------------------------------------------------------------------------------
class ModelSwitcher:
    """Drives ``next_model`` switches; one per coordinator process, one active at a time (a Redis lease)."""

    def __init__(
        self,
        *,
        prefix: str,
        redis: aioredis.Redis,
        jobs: JobQueue,
        config: ConfigClient,
        store: WorkflowStore,
        vectors: VectorIndex,
        embedder: Embedder,
        tick_s: float = TICK_S,
        settle_s: float = CONFIG_SETTLE_S,
        stall_s: float = STALL_S,
        drain_max_s: float = DRAIN_MAX_S,
        lease_s: float = LEASE_S,
    ) -> None:
        self.progress = SwitchProgress(redis, prefix)
        self.jobs = jobs  # JetStream's or Temporal's (actors/adapters/temporal_jobs.py)
        self.config = config
        self.store = store
        self.vectors = vectors
        self.embedder = embedder
        self.tick_s = tick_s
        self.settle_s = settle_s
        self.stall_s = stall_s
        self.drain_max_s = drain_max_s
        self.token = uuid.uuid4().hex  # this replica's lease value
        # not thread-local: the lease belongs to this switcher, whichever task renews or releases it
        self._lease = Lock(redis, lease_key(prefix), timeout=lease_s, blocking=False, thread_local=False)
        self._holding = False
        self._target: str | None = None
        self._published: set[str] = set()  # msg ids this replica published for the current switch
        self._last_done = -1
        self._last_progress_at = time.monotonic()
        self._waiting: set[str] | None = None  # see ``drain``
        self._waiting_since = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; a failing tick (Redis, NATS or the config actor down) is retried."""
        while not stop.is_set():
            try:
                await self.tick()
            except (MeshError, RedisError, OSError, TimeoutError) as e:
                log.warning("switch.tick_failed", error=str(e) or type(e).__name__)
            except Exception:  # broad on purpose: a bug in one tick must not end switching for this process
                log.exception("switch.tick_crashed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.tick_s)
        await self._release()

    async def tick(self) -> None:
        cfg = await self.config.get()
        if cfg.next_model and cfg.next_model == cfg.active_model:
            if await self._hold_lease():  # a swap interrupted between its two writes: finish it
                await self._finish(cfg.next_model)
            return
        target = switch_target(cfg)
        if target != self._target:
            if self._target is not None and await self._hold_lease():
                await self._cancel(self._target, f"next_model changed to {target or 'none'}")
            self._target, self._published, self._last_done = target, set(), -1
            self._last_progress_at, self._waiting = time.monotonic(), None
        if target is None:
            await self._release()
            return
        if await self._hold_lease():
            await self._drive(cfg, target)

    # --- requests (``models.switch``, from the gateway's POST /models/switch) ------------------------------
    async def request(self, req: ModelSwitchRequest) -> ModelSwitchReply:
        """Set ``next_model`` to the requested model (the active model: clear it, cancelling a running switch).

        The next tick picks the change up. A refused value raises the config actor's ``ServiceRefused`` (400),
        a config actor that does not answer a ``RetryableError`` (503): the caller decides, nothing is queued.
        """
        if not req.model:
            raise PermanentError("a model name is required")
        current = await self.config.read()  # the Config DB now, not a cached value: a cancel must not be lost
        before, value = switch_target(current), next_model_for(req.model, current)
        cfg = current if value == current.next_model else await self.config.set("next_model", value)
        cancelled = before if before is not None and before != switch_target(cfg) else ""
        log.info("switch.requested", model=req.model, next_model=cfg.next_model or None, cancelled=cancelled)
        return ModelSwitchReply(active_model=cfg.active_model, next_model=cfg.next_model, cancelled=cancelled)

    # --- one step of a switch --------------------------------------------------------------------------------
    async def _drive(self, cfg: MeshConfig, target: str) -> None:
        now = time.time()
        prog = await self.progress.read(target)
        if prog is None or prog.state in FINISHED or prog.from_model != cfg.active_model:
            prog = Progress(
                model=target, state=SwitchState.BUILDING, from_model=cfg.active_model, started_at=now
            )
            await self.progress.mark_latest(target)
            log.info("switch.started", model=target, active=cfg.active_model)
        if not await self._servable(prog):
            return

        done_ids = await self.store.ids_in_status(Status.DONE, limit=MAX_IMAGES)
        vector_ids = await self.vectors.image_ids(target)
        done, total, missing = count(done_ids, vector_ids)
        if done > self._last_done:
            self._last_done, self._last_progress_at = done, time.monotonic()
        elif stalled(self._last_progress_at, time.monotonic(), len(missing), self.stall_s):
            prog.round += 1
            prog.reason = f"stalled: {len(missing)} images without a vector; their jobs published again"
            self._published.clear()
            self._last_progress_at = time.monotonic()
            log.warning("switch.stalled", model=target, missing=len(missing), round=prog.round)
        published = await self._publish(target, prog, missing)

        settle_at = prog.started_at + self.settle_s
        complete = done == total and time.time() >= settle_at
        unfinished: set[str] = set()
        if complete:
            for status in UNFINISHED:
                unfinished.update(await self.store.ids_in_status(status, limit=MAX_IMAGES))
        waiting = drain(self._waiting, complete, unfinished)
        if waiting is not None and self._waiting is None:
            self._waiting_since = time.monotonic()
        self._waiting = waiting
        prog.done, prog.total, prog.updated_at = done, total, time.time()
        prog.reason = f"waiting for {len(waiting)} images in flight" if waiting else prog.reason
        await self.progress.save(prog)
        if published:
            log.info("switch.published", model=target, jobs=published, done=done, total=total)
        waited_s = time.monotonic() - self._waiting_since
        if ready_to_swap(complete, waiting, waited_s, self.drain_max_s):
            if waiting:
                log.warning("switch.drain_timeout", model=target, unfinished=sorted(waiting)[:20])
            await self._swap(prog)

    async def _servable(self, prog: Progress) -> bool:
        """Whether Triton serves the model as an image model; a definite no fails the switch."""
        try:
            info = await self.embedder.model_info(prog.model)
        except EmbedderUnavailable as e:
            prog.reason = f"waiting for Triton: {e.message}"
            prog.updated_at = time.time()
            await self.progress.save(prog)
            return False
        except EmbedderException as e:
            await self._fail(prog, f"Triton can not serve {prog.model}: {e.message}")
            return False
        if info.kind != "image":
            await self._fail(prog, f"{prog.model} is a {info.kind} model, not an image model")
            return False
        return True

    async def _publish(self, target: str, prog: Progress, missing: list[str]) -> int:
        todo = [
            (image_id, switch_msg_id(target, prog.started_at, prog.round, image_id))
            for image_id in missing
            if switch_msg_id(target, prog.started_at, prog.round, image_id) not in self._published
        ]
        for start in range(0, len(todo), PUBLISH_BATCH):
            batch = todo[start : start + PUBLISH_BATCH]
            await asyncio.gather(*(self._publish_one(target, image_id, msg_id) for image_id, msg_id in batch))
        return len(todo)

    async def _publish_one(self, target: str, image_id: str, msg_id: str) -> None:
        """One re-embed job; the record's own ``attempt``: not a replay, the pipeline takes it as a re-embed.
        A publish JetStream did not acknowledge raises ``RetryableError``: the next tick publishes it again."""
        rec = await self.store.get(image_id)
        if rec is None:  # deleted meanwhile
            return
        await self.jobs.publish_record(rec, models=[target], msg_id=msg_id, cause=Cause.MODEL_SWITCH)
        self._published.add(msg_id)

    async def _swap(self, prog: Progress) -> None:
        if switch_target(await self.config.read()) != prog.model:
            return  # changed under us: the next tick sees it
        prog.state, prog.updated_at = SwitchState.SWAPPING, time.time()
        await self.progress.save(prog)
        await self.config.set("active_model", prog.model)  # the atomic swap: one KV write
        log.info("switch.swapped", model=prog.model, previous=prog.from_model, images=prog.total)
        await self._finish(prog.model)

    async def _finish(self, model: str) -> None:
        """After the swap: clear next_model (idempotent), mark the switch done."""
        await self.config.set("next_model", "")
        prog = await self.progress.read(model)
        if prog is not None and prog.state not in FINISHED:
            prog.state, prog.reason = SwitchState.DONE, ""
            prog.updated_at = prog.finished_at = time.time()
            await self.progress.save(prog)
            log.info(
                "switch.done",
                model=model,
                images=prog.total,
                seconds=round(prog.finished_at - prog.started_at, 1),
            )

    async def _fail(self, prog: Progress, reason: str) -> None:
        prog.state, prog.reason = SwitchState.FAILED, reason
        prog.updated_at = prog.finished_at = time.time()
        await self.progress.save(prog)
        await self.progress.mark_latest(prog.model)
        log.warning("switch.failed", model=prog.model, reason=reason)
        with contextlib.suppress(ServiceCallError, RetryableError):
            cfg = await self.config.get()
            if cfg.next_model == prog.model:
                await self.config.set("next_model", "")

    async def _cancel(self, model: str, reason: str) -> None:
        prog = await self.progress.read(model)
        if prog is not None and prog.state not in FINISHED:
            prog.state, prog.reason = SwitchState.CANCELLED, reason
            prog.updated_at = prog.finished_at = time.time()
            await self.progress.save(prog)
            log.info("switch.cancelled", model=model, reason=reason)

    # --- the lease ----------------------------------------------------------------------------------------
    async def _hold_lease(self) -> bool:
        """Renew the lease this replica holds, or take it when it is free; False while another one holds it."""
        if self._holding:
            try:
                await self._lease.reacquire()  # back to the full timeout
                return True
            except LockNotOwnedError:  # it expired (this replica stalled): another one may hold it now
                self._holding = False
                log.warning("switch.lease_lost", owner=self.token)
        self._holding = await self._lease.acquire(blocking=False, token=self.token)
        if self._holding:
            self._published.clear()  # another replica may have driven meanwhile: JetStream drops repeats
            log.info("switch.lease_taken", owner=self.token)
        return self._holding

    async def _release(self) -> None:
        """Give the lease up (no switch, or shutting down); one that expired or can not be reached meanwhile
        needs nothing: it expires by itself."""
        if self._holding:
            self._holding = False
            with contextlib.suppress(LockError, RedisError, OSError):
                await self._lease.release()
