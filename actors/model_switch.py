"""Switching the active model without downtime: build the new model's index in the background, then swap.

An operator (or ``POST /models/switch`` through the gateway) sets ``MeshConfig.next_model``. The switcher, a
task of every coordinator process, then:

1. checks that Triton serves ``next_model`` as an image model (else: state ``failed``, ``next_model`` cleared);
2. lists the images whose record is ``done`` and publishes a re-embed job ``ProcessJob(models=[next_model])``
   for each one without a vector under ``next_model`` (``Nats-Msg-Id`` ``switch:<model>:<start>:<round>:<id>``:
   JetStream drops a repeat, from this replica or another). ``Pipeline.process`` adds the vector without
   touching the record. Meanwhile new uploads are embedded under both models (``workflow.planned_models``);
3. keeps its progress in Redis (``<prefix>:switch:<model>``: state, done, total) for ``GET /models``;
4. swaps when every done image has a vector under ``next_model``, readers have had time to see ``next_model``
   (their config cache is at most 2 s old), and the images that were pending or in flight at that moment are
   done too (``drain``; at most ``DRAIN_MAX_S``): one KV write of ``active_model = next_model`` (the atomic
   swap; readers follow within their cache time, the old index answering until then), then ``next_model`` is
   cleared. An image that finished without the new vector (its job began before ``next_model`` was seen) makes
   the index incomplete again: it is re-embedded first.

Several coordinator replicas: one drives a switch at a time, holding a Redis lease (``SET NX PX``, renewed
every tick); every step is idempotent, so a replica that takes over after a crash simply goes on. The old
model's index is kept: switching back is the same procedure and only re-embeds the images uploaded since.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
import uuid
from collections.abc import Iterable, Mapping

import msgspec
import redis.asyncio as aioredis
import structlog
from nats.js import JetStreamContext
from redis.exceptions import RedisError

from actors import contract
from actors.adapters.config_client import ConfigClient
from actors.adapters.embedder import Embedder, EmbedderException, EmbedderUnavailable
from actors.adapters.vector_index import VectorIndex
from actors.adapters.workflow_store import WorkflowStore
from actors.contract import MeshConfig, ProcessJob, Status
from actors.errors import MeshError, RetryableError, ServiceCallError

log = structlog.get_logger("model_switch")

TICK_S = 1.0
LEASE_MS = 10_000  # a replica that dies holding the lease is replaced after this long
CONFIG_SETTLE_S = 3.0  # readers cache the config for <= 2 s: after this, every new job embeds next_model too
STALL_S = 120.0  # no progress for this long: publish the missing images' jobs again (a new round)
PUBLISH_BATCH = 64
UNFINISHED = (Status.PENDING, Status.PROCESSING, Status.EMBEDDED, Status.INDEXED)
DRAIN_MAX_S = 60.0  # how long the swap waits for the images unfinished when the new index became complete
MAX_IMAGES = 10_000_000

_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class SwitchState(enum.StrEnum):
    BUILDING = "building"  # re-embedding the images that lack a vector under the new model
    SWAPPING = "swapping"  # complete: writing active_model
    DONE = "done"
    FAILED = "failed"  # the model can not be switched to (not served, not an image model)
    CANCELLED = "cancelled"  # next_model was cleared or changed before the swap


FINISHED = frozenset({SwitchState.DONE, SwitchState.FAILED, SwitchState.CANCELLED})


class Progress(msgspec.Struct, kw_only=True):
    """A switch's progress, as stored in ``<prefix>:switch:<model>`` and shown by ``GET /models``."""

    model: str
    state: SwitchState
    from_model: str = ""
    done: int = 0  # done images with a vector under ``model``
    total: int = 0  # done images
    round: int = 0  # bumped when a stalled switch publishes its jobs again
    started_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float = 0.0
    reason: str = ""


# --- keys (``P`` is ``settings.redis_prefix``) ---------------------------------------------------------------
def progress_key(prefix: str, model: str) -> str:
    return f"{prefix}:switch:{model}"


def lease_key(prefix: str) -> str:
    return f"{prefix}:switch:lease"


def request_key(prefix: str) -> str:
    """Where ``POST /models/switch`` leaves its request (the gateway may not write the config itself)."""
    return f"{prefix}:switch:request"


def last_key(prefix: str) -> str:
    """The model of the latest switch (for ``GET /models`` once it is over)."""
    return f"{prefix}:switch:last"


def encode_progress(p: Progress) -> dict[str, str]:
    return {k: str(v) for k, v in msgspec.structs.asdict(p).items()}


def decode_progress(raw: Mapping[bytes | str, bytes | str]) -> Progress | None:
    if not raw:
        return None
    fields = {_text(k): _text(v) for k, v in raw.items()}
    try:
        return msgspec.convert(fields, Progress, strict=False)
    except msgspec.ValidationError:
        return None


async def read_progress(redis: aioredis.Redis, prefix: str, model: str | None = None) -> Progress | None:
    """The progress of the switch to ``model`` (default: the latest switch), or None."""
    if model is None:
        last = await redis.get(last_key(prefix))
        if not last:
            return None
        model = _text(last)
    return decode_progress(await redis.hgetall(progress_key(prefix, model)))  # type: ignore[misc]


# --- the pure decisions (unit-tested) -------------------------------------------------------------------------
def switch_target(cfg: MeshConfig) -> str | None:
    """The model a switch is building, or None. ``next_model == active_model`` is a swap half done: none."""
    return cfg.next_model if cfg.next_model and cfg.next_model != cfg.active_model else None


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


# --- the switcher -----------------------------------------------------------------------------------------
class ModelSwitcher:
    """Drives ``next_model`` switches; one per coordinator process, one active at a time (a Redis lease)."""

    def __init__(
        self,
        *,
        prefix: str,
        redis: aioredis.Redis,
        js: JetStreamContext,
        config: ConfigClient,
        store: WorkflowStore,
        vectors: VectorIndex,
        embedder: Embedder,
        tick_s: float = TICK_S,
        settle_s: float = CONFIG_SETTLE_S,
        stall_s: float = STALL_S,
        drain_max_s: float = DRAIN_MAX_S,
    ) -> None:
        self.prefix = prefix
        self.redis = redis
        self.js = js
        self.config = config
        self.store = store
        self.vectors = vectors
        self.embedder = embedder
        self.tick_s = tick_s
        self.settle_s = settle_s
        self.stall_s = stall_s
        self.drain_max_s = drain_max_s
        self.token = uuid.uuid4().hex  # this replica's lease value
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
            except Exception:
                log.exception("switch.tick_crashed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.tick_s)
        await self._release()

    async def tick(self) -> None:
        await self._take_request()
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

    # --- one step of a switch --------------------------------------------------------------------------------
    async def _drive(self, cfg: MeshConfig, target: str) -> None:
        now = time.time()
        prog = await read_progress(self.redis, self.prefix, target)
        if prog is None or prog.state in FINISHED or prog.from_model != cfg.active_model:
            prog = Progress(
                model=target, state=SwitchState.BUILDING, from_model=cfg.active_model, started_at=now
            )
            await self.redis.set(last_key(self.prefix), target)
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
        await self._save(prog)
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
            await self._save(prog)
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
        rec = await self.store.get(image_id)
        if rec is None:  # deleted meanwhile
            return
        job = ProcessJob(
            image_id=image_id,
            object_key=rec.object_key,
            sha256=rec.sha256,
            trace_id=rec.trace_id,
            attempt=rec.attempt,  # not a replay: the pipeline takes it as a background re-embed
            models=[target],
        )
        try:
            await self.js.publish(
                contract.JOBS_SUBJECT, contract.encode(job), headers={contract.MSG_ID_HEADER: msg_id}
            )
        except Exception as e:  # not stored: the next tick publishes it again
            raise RetryableError(f"could not publish the re-embed job of {image_id}: {e!r}") from e
        self._published.add(msg_id)

    async def _swap(self, prog: Progress) -> None:
        self.config.invalidate()
        if switch_target(await self.config.get()) != prog.model:
            return  # changed under us: the next tick sees it
        prog.state, prog.updated_at = SwitchState.SWAPPING, time.time()
        await self._save(prog)
        await self.config.set("active_model", prog.model)  # the atomic swap: one KV write
        log.info("switch.swapped", model=prog.model, previous=prog.from_model, images=prog.total)
        await self._finish(prog.model)

    async def _finish(self, model: str) -> None:
        """After the swap: clear next_model (idempotent), mark the switch done."""
        await self.config.set("next_model", "")
        prog = await read_progress(self.redis, self.prefix, model)
        if prog is not None and prog.state not in FINISHED:
            prog.state, prog.reason = SwitchState.DONE, ""
            prog.updated_at = prog.finished_at = time.time()
            await self._save(prog)
            log.info(
                "switch.done",
                model=model,
                images=prog.total,
                seconds=round(prog.finished_at - prog.started_at, 1),
            )

    async def _fail(self, prog: Progress, reason: str) -> None:
        prog.state, prog.reason = SwitchState.FAILED, reason
        prog.updated_at = prog.finished_at = time.time()
        await self._save(prog)
        await self.redis.set(last_key(self.prefix), prog.model)
        log.warning("switch.failed", model=prog.model, reason=reason)
        with contextlib.suppress(ServiceCallError, RetryableError):
            cfg = await self.config.get()
            if cfg.next_model == prog.model:
                await self.config.set("next_model", "")

    async def _cancel(self, model: str, reason: str) -> None:
        prog = await read_progress(self.redis, self.prefix, model)
        if prog is not None and prog.state not in FINISHED:
            prog.state, prog.reason = SwitchState.CANCELLED, reason
            prog.updated_at = prog.finished_at = time.time()
            await self._save(prog)
            log.info("switch.cancelled", model=model, reason=reason)

    async def _save(self, prog: Progress) -> None:
        await self.redis.hset(progress_key(self.prefix, prog.model), mapping=encode_progress(prog))  # type: ignore[arg-type,misc]

    # --- requests from the gateway ---------------------------------------------------------------------------
    async def _take_request(self) -> None:
        """Apply a ``POST /models/switch`` left in Redis: set (or, for the active model, clear) next_model."""
        raw = await self.redis.getdel(request_key(self.prefix))
        if not raw:
            return
        try:
            model = msgspec.json.decode(raw, type=dict[str, str])["model"]
        except (msgspec.DecodeError, msgspec.ValidationError, KeyError):
            log.warning("switch.bad_request", raw=_text(raw)[:200])
            return
        cfg = await self.config.get()
        value = "" if model == cfg.active_model else model
        if value == cfg.next_model:
            return
        try:
            await self.config.set("next_model", value)
        except ServiceCallError as e:
            if e.retryable:
                await self.redis.set(request_key(self.prefix), raw, nx=True)  # try again next tick
                raise
            log.warning("switch.request_refused", model=model, error=e.description)
            return
        log.info("switch.requested", model=model, next_model=value or None)

    # --- the lease ----------------------------------------------------------------------------------------
    async def _hold_lease(self) -> bool:
        key = lease_key(self.prefix)
        if self._holding and await self.redis.eval(_RENEW, 1, key, self.token, LEASE_MS):  # type: ignore[misc]
            return True
        self._holding = bool(await self.redis.set(key, self.token, nx=True, px=LEASE_MS))
        if self._holding:
            self._published.clear()  # another replica may have driven meanwhile: JetStream drops repeats
            log.info("switch.lease_taken", owner=self.token)
        return self._holding

    async def _release(self) -> None:
        if self._holding:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.eval(_RELEASE, 1, lease_key(self.prefix), self.token)  # type: ignore[misc]
            self._holding = False


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
