"""The near-duplicate groups kept at index time, measured (issue 13, point 4): what keeping them costs an upsert,
and how long a page of ``index.groups`` takes, on an index planted beforehand (``query.plant``).

A hook, not wired into ``make bench`` yet: the large run would plant 1M vectors, build the kept state
(``build``: the time a threshold or model change costs), insert 10k more through the indexer's own path
(``keeping_cost``: the vector's write, then its range query and join, timed apart), and walk the pages
(``page_latency``). Each function works on the adapters the indexer uses, so the figures are the indexer's
Redis work without NATS.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from actors.contract import MeshConfig
from actors.group_keeper import GroupKeeper
from actors.group_upkeep import GroupUpkeep
from ops.bench.stats import percentile


@dataclass
class _Config:
    """The Config DB as the upkeep reads it, fixed: the model and threshold to keep."""

    value: MeshConfig
    live: bool = True

    async def get(self) -> MeshConfig:
        return self.value

    async def read(self) -> MeshConfig:
        return self.value


def summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99 and mean, in milliseconds."""
    return {
        "p50_ms": percentile(seconds, 50) * 1e3,
        "p95_ms": percentile(seconds, 95) * 1e3,
        "p99_ms": percentile(seconds, 99) * 1e3,
        "mean_ms": float(np.mean(seconds)) * 1e3,
        "n": len(seconds),
    }


async def build(
    keeper: GroupKeeper, model: str, threshold: float, max_rounds: int = 10**7
) -> dict[str, float]:
    """Keep ``model``'s groups at ``threshold`` and build them from the vectors stored: seconds and images/s."""
    upkeep = GroupUpkeep(keeper, _Config(MeshConfig(active_model=model, near_duplicate_threshold=threshold)))
    start = time.perf_counter()
    for _ in range(max_rounds):
        if not await upkeep.step():
            break
    seconds = time.perf_counter() - start
    [state] = [s for s in await keeper.store.states(model) if s.threshold == threshold]
    return {"seconds": seconds, "images": state.scanned, "images_per_s": state.scanned / max(seconds, 1e-9)}


async def keeping_cost(
    keeper: GroupKeeper, model: str, ids: Sequence[str], vectors: np.ndarray
) -> dict[str, dict[str, float]]:
    """Upsert each vector as the indexer does, timing the write alone and the groups' part (range query and
    join) apart: the cost per image of keeping groups is the second."""
    write, keep = [], []
    for image_id, vector in zip(ids, vectors, strict=True):
        t0 = time.perf_counter()
        _, changed = await keeper.index.upsert_changed(model, image_id, vector)
        t1 = time.perf_counter()
        await keeper.upserted(model, image_id, vector, changed=changed)
        write.append(t1 - t0)
        keep.append(time.perf_counter() - t1)
    return {"write": summary(write), "keep_groups": summary(keep)}


async def page_latency(
    keeper: GroupKeeper, model: str, threshold: float, limit: int = 50, pages: int = 200
) -> dict[str, float]:
    """Walk up to ``pages`` pages of the kept groups, timing each read."""
    took, cursor = [], ""
    for _ in range(pages):
        t0 = time.perf_counter()
        page = await keeper.page(model, threshold, cursor, limit)
        took.append(time.perf_counter() - t0)
        if page.status != "ready" or page.next_cursor is None:
            break
        cursor = page.next_cursor
    return summary(took) | {"total_groups": float(page.total_groups)}
