"""Near-duplicate groups kept at index time: the indexer's part that makes ``GET /duplicates`` read stored groups.

The groups of the active model at ``near_duplicate_threshold`` (and of a switch's next model) are union-find
state in Redis (``actors/adapters/group_store.py``: the key layout, and the scripts that change it atomically).

- Upsert: after the vector is written, one range query at each kept threshold of that model finds the vector's
  neighbours, and one script joins the image, their groups and them into one group. Two indexers that upsert two
  near images at once cannot both miss the pair: each writes its vector before its range query, and RediSearch
  indexes a write before it answers, so whichever queries second finds the other. The joins themselves are
  atomic scripts, and union is order-free, so any interleaving ends in the same groups.
- Delete: after the vector is gone, one script takes the image out of its group. If what is left may fall
  apart (the image was perhaps its only bridge) the group is marked dirty and re-split from range queries over
  its members only: before the delete answers for a group of up to ``INLINE_SPLIT`` images, in the background
  for a larger one. The split is a compare-and-set on the group's members (``SPLIT``): a join or a leave in
  between makes it read again. A join's script skips images whose vector is gone, so a range query that still
  saw a deleted image cannot bring it back.
- Which states are kept follows the Config DB: ``group_upkeep.py`` (one indexer at a time) keeps, builds,
  retires and drops states, and splits the groups left dirty. A state is answered once built (``ready``).

Pages (``page``) read one consistent snapshot in one script: O(log N + page) Redis work, whatever N.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np
import structlog
from prometheus_client import Counter, Histogram

from actors import duplicates
from actors.adapters.group_store import GroupsPage, GroupStore, KeptState
from actors.adapters.vector_index import VectorIndex
from actors.contract import Hit
from actors.errors import RetryableError

log = structlog.get_logger("groups")

MAX_NEIGHBORS = 1_000  # a range query's LIMIT (components still join through the neighbours' own queries)
# the groups' range queries search the HNSW graph this much past their radius (RediSearch's EPSILON; its default,
# 0.01, missed 49 of 3,672 pairs of 1,500 clustered 1280-d vectors inserted one by one: an insert's query is
# the only one that sees its pair; 0.5 missed none, at the same 0.5 ms a query, and on 4,000 256-d vectors too)
RANGE_EPSILON = 0.5
LOADING_WAIT_S = 10.0  # how long an upsert's range query waits for an index RediSearch is still scanning
LOADING_POLL_S = 0.05
INLINE_SPLIT = 256  # a delete re-splits a group this small before it answers; a larger one in the background
SPLIT_TRIES = 3  # compare-and-set attempts of one split before it is left to the next round
MAX_PAGE_IDS = 100_000  # images in one page of groups (about 3.5 MB of JSON; NATS carries at most 8 MB)

JOIN_SECONDS = Histogram(
    "mesh_groups_join_seconds",
    "Keeping groups at index time: an upserted vector's range query and join, per kept state",
    ["model"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
SPLITS = Counter("mesh_groups_splits_total", "Groups re-split after a delete", ["where", "outcome"])


class GroupKeeper:
    """Keeps the kept near-duplicate groups up to date at index time: hooks for the indexer's upserts and
    deletes, splits, and pages for ``index.groups`` (``group_upkeep.py`` runs the background part)."""

    def __init__(
        self,
        index: VectorIndex,
        store: GroupStore,
        *,
        inline_split: int = INLINE_SPLIT,
    ) -> None:
        self.index, self.store, self.inline_split = index, store, inline_split

    # --- index time (the indexer's handlers) ----------------------------------------------------------------
    async def upserted(self, model: str, image_id: str, vector: np.ndarray, *, changed: bool = False) -> None:
        """Join a vector just written into every kept state of its model (``changed``: it replaced another
        vector of the image, whose pairs may be gone: the image leaves its group first)."""
        for state in await self.store.states(model):
            start = time.perf_counter()
            if changed:
                await self._leave(state, image_id)
            hits = await self._neighbours(model, vector, image_id, state.threshold)
            head = self.index.key_prefix(model)
            moved = await self.store.join(state, head, image_id, [h.image_id for h in hits])
            JOIN_SECONDS.labels(model).observe(time.perf_counter() - start)
            log.debug(
                "groups.joined", image_id=image_id, state=state.field, neighbours=len(hits), moved=moved
            )

    async def _neighbours(self, model: str, vector: np.ndarray, image_id: str, threshold: float) -> list[Hit]:
        """The range query of a vector just written. An index RediSearch is still scanning (the first upsert
        of a model creates it) answers "loading" for a moment: wait for it, up to ``LOADING_WAIT_S``, rather
        than fail an upsert whose vector is written already (its retry would process the image again)."""
        deadline = time.monotonic() + LOADING_WAIT_S
        while True:
            try:
                return await self.index.query(
                    model,
                    vector,
                    MAX_NEIGHBORS,
                    exclude_id=image_id,
                    min_score=threshold,
                    epsilon=RANGE_EPSILON,
                )
            except RetryableError as e:
                if e.code != "index_loading" or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(LOADING_POLL_S)

    async def deleted(self, image_id: str, model: str | None = None) -> None:
        """Take an image whose vector is gone (from ``model``'s index, or every index) out of the kept
        groups; a group it may have held together is re-split."""
        for state in await self.store.states(model):
            await self._leave(state, image_id)

    async def _leave(self, state: KeptState, image_id: str) -> None:
        gid = await self.store.leave(state, image_id)
        if gid is None:
            return
        members = await self.store.members(state, gid)
        if len(members) <= self.inline_split:
            await self.resplit(state, gid, members, where="delete")
        else:
            log.info(
                "groups.split_deferred", image_id=image_id, state=state.field, group=gid, size=len(members)
            )

    async def resplit(
        self, state: KeptState, gid: str, members: Sequence[str] | None = None, where: str = "keeper"
    ) -> bool:
        """Re-split a dirty group into the components of its members' range queries; False when the group kept
        changing under it (it stays dirty: the keeper tries again)."""
        for _ in range(SPLIT_TRIES):
            snapshot = list(members) if members is not None else await self.store.members(state, gid)
            members = None
            await self.index.require_loaded(state.model)
            vectors = await self.index.vectors(state.model, snapshot)
            near = await self.index.neighbors(
                state.model, vectors, state.threshold, MAX_NEIGHBORS, epsilon=RANGE_EPSILON
            )
            edges = [(a, hit.image_id) for a, hits in near.items() for hit in hits]
            parts = duplicates.split(snapshot, edges)
            if await self.store.split(state, gid, snapshot, parts):
                SPLITS.labels(where, "split").inc()
                log.info(
                    "groups.split",
                    state=state.field,
                    group=gid,
                    size=len(snapshot),
                    groups=sum(len(p) > 1 for p in parts),
                )
                return True
        SPLITS.labels(where, "changed").inc()
        return False

    # --- reading ------------------------------------------------------------------------------------------
    async def page(self, model: str, threshold: float, cursor: str, limit: int) -> GroupsPage:
        """A page of the state of ``model`` at ``threshold``: ``status`` "ready" with its groups, or "building"
        (how many images its build has joined) or "none" (not kept)."""
        return await self.store.page(duplicates.state_field(model, threshold), cursor, limit, MAX_PAGE_IDS)

    async def kept_thresholds(self, model: str) -> list[float]:
        """The thresholds at which ``model``'s groups are kept."""
        return sorted(s.threshold for s in await self.store.states(model))
