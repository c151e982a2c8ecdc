"""The kept near-duplicate groups' background upkeep, in every indexer; one at a time works (a Redis lease).

Each round (``step``), the indexer holding the lease:

- follows the Config DB (``duplicates.kept_fields``: the active model's groups at ``near_duplicate_threshold``,
  and a switch's next model's): a state the config asks for and Redis does not keep is kept, as a new
  generation that is ``building``; a kept state the config no longer asks for is retired once it has not been
  asked for during ``RETIRE_GRACE_S`` (a switch back within it keeps it whole). Only from a config known to be
  current (the watch up, else the config service's answer now): a stale value neither keeps nor retires;
- builds each ``building`` state, ``BUILD_BATCH`` images a round: a SCAN step over the model's vectors (its
  cursor is stored, so another indexer resumes it), one range query and one join per image. Upserts meanwhile
  join the state themselves (they read which states are kept after writing their vector, and the state is kept
  before its scan begins, so an image is joined by its upsert, or found by the scan, or both: joins are
  idempotent). The state is ``ready`` (answered) once the scan is complete;
- splits up to ``DIRTY_BATCH`` dirty groups of each state (a delete's group too large to split before it
  answered, or one whose split kept meeting concurrent changes);
- deletes retired states, ``DROP_BATCH`` groups a round.

Cost of a build: one range query and one script per image (``mesh_groups_build_images_total`` counts them).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Protocol

import structlog
from prometheus_client import Counter
from redis.exceptions import LockError, LockNotOwnedError, RedisError

from actors import duplicates
from actors.adapters.group_store import KeptState
from actors.adapters.redis_errors import redis_errors
from actors.contract import MeshConfig
from actors.errors import MeshError, RetryableError
from actors.group_keeper import MAX_NEIGHBORS, RANGE_EPSILON, GroupKeeper

log = structlog.get_logger("groups")

BUILD_BATCH = 200  # a build's SCAN COUNT per round (a hint to Redis: about that many images joined)
DIRTY_BATCH = 8  # dirty groups split per round
DROP_BATCH = 100  # groups of a retired state deleted per round
RETIRE_GRACE_S = 60.0  # how long a state stays kept once the config no longer asks for it
TICK_S = 1.0  # the pause between rounds that found nothing to do

BUILT = Counter("mesh_groups_build_images_total", "Images a kept state's build has joined", ["model"])


class ConfigSource(Protocol):
    """What the upkeep reads of the Config DB (``ConfigClient``): the value its watch brought and whether the
    watch is up (``live``), or the config service's answer now (``read``)."""

    @property
    def live(self) -> bool: ...

    async def get(self) -> MeshConfig: ...

    async def read(self) -> MeshConfig: ...


class GroupUpkeep:
    """The background part of the kept groups, over the indexer's ``GroupKeeper``; ``run`` until stopped."""

    def __init__(
        self,
        keeper: GroupKeeper,
        config: ConfigSource,
        *,
        retire_grace_s: float = RETIRE_GRACE_S,
        build_batch: int = BUILD_BATCH,
        tick_s: float = TICK_S,
    ) -> None:
        self.keeper, self.config = keeper, config
        self.index, self.store = keeper.index, keeper.store
        self.retire_grace_s, self.build_batch, self.tick_s = retire_grace_s, build_batch, tick_s
        self.token = uuid.uuid4().hex  # this indexer's lease value
        self._lease = self.store.lease()
        self._holding = False
        self._unwanted: dict[str, float] = {}  # kept state -> since when the config no longer asks for it

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the states the config asks for until ``stop``; one step after another while there is work."""
        try:
            while not stop.is_set():
                try:
                    busy = await self.step()
                except MeshError as e:  # Redis away, an index loading: the next tick tries again
                    log.warning("groups.keeper_unavailable", error=e.message)
                    busy = False
                except Exception:  # broad on purpose: a bug (or an ACL refusal) here must not end the indexer
                    log.exception("groups.keeper_crashed")
                    busy = False
                if busy:
                    await asyncio.sleep(0)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.tick_s)
        finally:
            await self._release()

    async def step(self) -> bool:
        """One round, if this indexer holds the lease: follow the config, build, split, drop. True when work is
        left that the next round should do at once."""
        if not await self._hold_lease():
            return False
        states = await self.store.states()
        cfg = await self._current_config()
        if cfg is not None:  # a config that may be stale neither keeps nor retires a state
            states = await self._follow_config(cfg, states)
        busy = False
        for state in states:
            if state.status != "ready":
                busy = await self._build_step(state) or busy
            busy = await self._split_dirty(state) or busy
        for gen in await self.store.dropping():
            dropped = await self.store.drop_step(gen, DROP_BATCH)
            busy = busy or dropped > 0
            if dropped == 0:
                log.info("groups.dropped", gen=gen)
        return busy

    async def _current_config(self) -> MeshConfig | None:
        """The config as it is now: the watch's latest while it is up, else the config service's answer; None
        when neither is sure (an indexer that cannot see the Config DB must not retire what others keep)."""
        if self.config.live:
            return await self.config.get()
        try:
            return await self.config.read()
        except RetryableError:
            return None

    async def _follow_config(self, cfg: MeshConfig, states: list[KeptState]) -> list[KeptState]:
        kept = {s.field: s for s in states}
        wanted = duplicates.kept_fields(cfg)
        changed = False
        for field in wanted:
            parsed = duplicates.parse_state_field(field)
            if field not in kept and parsed is not None:
                gen = await self.store.adopt(field, *parsed)
                log.info("groups.kept", state=field, gen=gen)
                changed = True
        due, self._unwanted = duplicates.due_for_retirement(
            kept, wanted, self._unwanted, time.monotonic(), self.retire_grace_s
        )
        for field in due:
            if await self.store.retire(kept[field]):
                log.info("groups.retired", state=field, gen=kept[field].gen)
                changed = True
        return await self.store.states() if changed else states

    async def _build_step(self, state: KeptState) -> bool:
        """Join the next batch of the model's vectors; True while the scan goes on."""
        await self.index.require_loaded(state.model)
        cursor, ids = await self.index.scan_ids(state.model, state.cursor, self.build_batch)
        vectors = await self.index.vectors(state.model, ids)
        near = await self.index.neighbors(
            state.model, vectors, state.threshold, MAX_NEIGHBORS, epsilon=RANGE_EPSILON
        )
        head = self.index.key_prefix(state.model)
        for image_id in vectors:
            await self.store.join(state, head, image_id, [h.image_id for h in near.get(image_id, [])])
        BUILT.labels(state.model).inc(len(vectors))
        kept = await self.store.advance(state, cursor, len(ids), complete=cursor == 0)
        if kept and cursor == 0:
            log.info(
                "groups.ready",
                state=state.field,
                gen=state.gen,
                images=state.scanned + len(ids),
                s=round(time.time() - state.started_at, 1),
            )
        return kept and cursor != 0

    async def _split_dirty(self, state: KeptState) -> bool:
        """Split a few dirty groups; True when a full batch was split (more may wait)."""
        gids = await self.store.dirty(state, DIRTY_BATCH)
        done = [await self.keeper.resplit(state, gid) for gid in gids]
        return len(gids) == DIRTY_BATCH and all(done)

    # --- the lease ----------------------------------------------------------------------------------------
    async def _hold_lease(self) -> bool:
        """Renew the lease this indexer holds, or take it when it is free; False while another one holds it."""
        with redis_errors("groups lease"):
            if self._holding:
                try:
                    await self._lease.reacquire()
                    return True
                except LockNotOwnedError:  # it expired (this indexer stalled): another may hold it now
                    self._holding = False
                    log.warning("groups.lease_lost", owner=self.token)
            self._holding = bool(await self._lease.acquire(blocking=False, token=self.token))
        if self._holding:
            self._unwanted.clear()  # the grace restarts with each holder: it has seen the config only now
            log.info("groups.lease_taken", owner=self.token)
        return self._holding

    async def _release(self) -> None:
        if self._holding:
            self._holding = False
            with contextlib.suppress(LockError, RedisError, OSError):
                await self._lease.release()
