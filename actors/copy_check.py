"""The copy checker: a background step of every coordinator that verifies which look-alikes are copies.

Out of the ingest path and never in a request's: an image that reaches ``done`` is queued by the pipeline (one
Redis write, before its job is acked; a redelivered job of a done image queues it again; the reconciler queues
any done image whose check is missing or older than ``COPY_CHECK_VERSION``), and the checkers claim the queue
oldest first (a claim is a
lease: the image of a checker that dies is claimed again once it ends, so a kill loses nothing). For one image:
its candidates are the images at least ``near_duplicate_threshold`` similar in the active model's index (its
``MAX_CANDIDATES`` nearest by KNN with a wide beam, ``CANDIDATE_EF``, kept when above the cut: a
``VECTOR_RANGE`` query, HNSW's range search, missed copies at cosine 0.97 in a test, so one image of a pair
found the other while the other did not), each candidate not compared with it before is verified by
``actors.copies.verify`` (local features and a geometric check; the features were stored by the pipeline from
the decode it made anyway), and the verdicts are written both ways (``CopyPairs``), so a pair is verified once
and ``GET /duplicates`` reads copies without computing anything. A candidate whose features are not stored yet
is skipped: that image's own check, later, compares it with this one. While its coordinator has jobs in flight
the checker waits (up to ``YIELD_MAX_S`` of lag): uploads reach ``done`` first, the checks follow.

Metrics: ``mesh_copy_check_lag_seconds`` (how long the oldest queued image has waited; 0 when none),
``mesh_copy_check_queue``, ``mesh_copy_verify_seconds`` per pair, ``mesh_copy_check_seconds`` per image,
``mesh_copy_pairs_total{verdict}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import numpy as np
import structlog
from prometheus_client import Counter, Gauge, Histogram

from actors import copies
from actors.adapters.copy_pairs import CopyPairs
from actors.adapters.object_store import ObjectMissing, copy_features_key
from actors.contract import Hit, ImageRecord, Status
from actors.errors import MeshError
from actors.pipeline_io import ConfigSource

log = structlog.get_logger("copy_check")

MAX_CANDIDATES = 20  # per image: the nearest look-alikes above the cut (copies of one photo rarely exceed it)
CANDIDATE_EF = 200  # EF_RUNTIME of the candidate KNN at least (the Config DB's ef_runtime if larger)
FEATURES_CACHED = 256  # candidates' features kept in memory (~40 KB each): copies of one photo meet often
BATCH = 8  # images taken from the queue at once
IDLE_S = 1.0  # how long an idle checker waits before it looks at the queue again
# while its coordinator has jobs in flight the checker leaves them the CPU, until the oldest queued image has
# waited this long: a burst of uploads reaches ``done`` first, its copy checks follow; under a longer load the
# checks run beside the jobs, their verdicts at most this late
YIELD_MAX_S = 15.0

LAG = Gauge("mesh_copy_check_lag_seconds", "How long the oldest image waiting for its copy check has waited")
QUEUED = Gauge("mesh_copy_check_queue", "Images waiting for their copy check")
PAIR_SECONDS = Histogram(
    "mesh_copy_verify_seconds",
    "Copy verification of one candidate pair (local features and the geometric check)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
IMAGE_SECONDS = Histogram(
    "mesh_copy_check_seconds",
    "One image's copy check: candidates, features, verification, verdicts",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
PAIRS = Counter("mesh_copy_pairs_total", "Candidate pairs verified", ["verdict"])


class Records(Protocol):
    async def get(self, image_id: str) -> ImageRecord | None: ...
    async def get_embedding(self, model: str, image_id: str) -> np.ndarray | None: ...
    async def update(self, image_id: str, **fields: object) -> None: ...


class Neighbors(Protocol):
    async def query(
        self,
        model: str,
        vector: np.ndarray,
        k: int,
        *,
        exclude_id: str | None = None,
        ef_runtime: int | None = None,
    ) -> list[Hit]: ...


class Objects(Protocol):
    async def get(self, key: str) -> bytes: ...


class CopyChecker:
    """Takes images from the queue and verifies their candidates; ``check`` is one image."""

    def __init__(
        self,
        *,
        pairs: CopyPairs,
        records: Records,
        neighbors: Neighbors,
        objects: Objects,
        config: ConfigSource,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        """``busy``: whether the coordinator has jobs in flight (the checker yields to them: ``YIELD_MAX_S``)."""
        self.pairs, self.records, self.neighbors = pairs, records, neighbors
        self.objects, self.config, self.busy = objects, config, busy
        # an image's features never change (its id is new on every upload): the latest used, least first
        self._features_cache: OrderedDict[str, copies.Features] = OrderedDict()

    async def run(self, stop: asyncio.Event) -> None:
        """Check queued images until ``stop``."""
        while not stop.is_set():
            worked = await self._step()
            if not worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=IDLE_S)

    async def _step(self) -> bool:
        """One batch; False when the queue was empty, Redis away, or the checker yields to jobs in flight."""
        try:
            count, oldest = await self.pairs.backlog()
            lag = 0.0 if oldest is None else max(0.0, time.time() - oldest)
            QUEUED.set(count)
            LAG.set(lag)
            if count and lag < YIELD_MAX_S and self.busy():
                return False
            taken = await self.pairs.take(BATCH) if count else []
        except MeshError as e:
            log.warning("copy_check.queue_unavailable", error=str(e))
            return False
        # the batch's images at once: their features come from S3 and their verification runs on threads
        results = await asyncio.gather(*(self._check_one(image_id) for image_id, _ in taken))
        if not all(results):
            return False
        return bool(taken)

    async def _check_one(self, image_id: str) -> bool:
        """Check one claimed image and release it; False when a dependency failed (it stays claimed: taken again
        when its lease ends, once Redis, S3... answer)."""
        try:
            await self.check(image_id)
        except MeshError as e:
            log.warning("copy_check.failed", image_id=image_id, error=str(e))
            return False
        except Exception:  # broad on purpose: a bug on one image must not stop the checker, nor retry forever
            log.exception("copy_check.crashed", image_id=image_id)  # the reconciler queues it again later
        with contextlib.suppress(MeshError):
            await self.pairs.finish(image_id)
        return True

    async def check(self, image_id: str) -> dict[str, bool] | None:
        """Verify the image's candidates not compared with it yet; the new verdicts (None: nothing to check:
        no record, not done, no features or no vector yet)."""
        started = time.perf_counter()
        rec = await self.records.get(image_id)
        if rec is None or rec.status != Status.DONE or not rec.copy_features_key:
            return None
        cfg = await self.config.get()
        vector = await self.records.get_embedding(cfg.active_model, image_id)
        if vector is None:
            return None
        nearest = await self.neighbors.query(
            cfg.active_model,
            vector,
            MAX_CANDIDATES,
            exclude_id=image_id,
            ef_runtime=max(cfg.ef_runtime, CANDIDATE_EF),
        )
        hits = [h for h in nearest if h.score >= cfg.near_duplicate_threshold]
        seen = await self.pairs.verdicts(image_id)
        todo = [h.image_id for h in hits if h.image_id not in seen]
        verdicts: dict[str, bool] = {}
        if todo:
            mine = copies.Features.from_bytes(await self.objects.get(rec.copy_features_key))
            theirs = await asyncio.gather(*(self._features(other) for other in todo))
            found = {o: f for o, f in zip(todo, theirs, strict=True) if f is not None}
            verdicts = await asyncio.to_thread(_verify_all, mine, found)
            await self.pairs.record(image_id, verdicts)
        await self.records.update(image_id, copy_check=copies.COPY_CHECK_VERSION)
        IMAGE_SECONDS.observe(time.perf_counter() - started)
        if verdicts:
            log.info(
                "copy_check.done", image_id=image_id, candidates=len(hits), copies=sum(verdicts.values())
            )
        return verdicts

    async def _features(self, image_id: str) -> copies.Features | None:
        cached = self._features_cache.get(image_id)
        if cached is not None:
            self._features_cache.move_to_end(image_id)
            return cached
        try:
            found = copies.Features.from_bytes(await self.objects.get(copy_features_key(image_id)))
        except (ObjectMissing, ValueError):  # not made yet (or unreadable): its own check covers the pair
            return None
        self._features_cache[image_id] = found
        if len(self._features_cache) > FEATURES_CACHED:
            self._features_cache.popitem(last=False)
        return found


def _verify_all(mine: copies.Features, theirs: dict[str, copies.Features]) -> dict[str, bool]:
    out = {}
    for other, features in theirs.items():
        t0 = time.perf_counter()
        copy = copies.verify(mine, features).is_copy
        PAIR_SECONDS.observe(time.perf_counter() - t0)
        PAIRS.labels("copy" if copy else "not_copy").inc()
        out[other] = copy
    return out


__all__ = ["MAX_CANDIDATES", "CopyChecker"]
