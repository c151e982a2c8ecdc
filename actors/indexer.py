"""The indexer actor: the NATS micro service ``indexer`` in front of the per-model vector indexes in Redis.

Endpoints ``index.upsert``, ``index.query``, ``index.delete`` and ``index.stats`` are thin calls into
``VectorIndex``; upserts and deletes also keep the near-duplicate groups (``actors/group_keeper.py``: the
active model's groups at ``near_duplicate_threshold``, joined at index time, re-split on delete).
``index.groups`` pages those kept groups; at another threshold it computes them on demand (one range query per
indexed image), for indexes of up to ``max_images`` images only. ``runtime.typed`` turns bad requests into 400
and Redis outages into 503. Replicas share the service's queue group, every write is idempotent by image id,
and the groups change only through atomic scripts, so running several is safe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np
import structlog
from fastapi.responses import JSONResponse
from nats.micro.request import Request
from prometheus_client import Counter, Histogram

from actors import contract, duplicates
from actors.adapters.config_client import ConfigClient
from actors.adapters.group_store import GroupsPage, GroupStore
from actors.adapters.vector_index import VectorIndex
from actors.contract import (
    DeleteReply,
    DeleteRequest,
    GroupsReply,
    GroupsRequest,
    IndexStats,
    QueryReply,
    QueryRequest,
    StatsRequest,
    UpsertReply,
    UpsertRequest,
)
from actors.errors import MeshError, PermanentError, RetryableError
from actors.group_keeper import RANGE_EPSILON, GroupKeeper
from actors.group_upkeep import GroupUpkeep
from actors.runtime import ActorProcess, typed
from actors.settings import Settings

log = structlog.get_logger("indexer")
MAX_PAIRS_PER_IMAGE = 50  # index.groups gives up past this many near pairs per indexed image, on average

# Redis-side latency per model (the runtime's mesh_service_request_seconds also counts decoding and NATS)
UPSERT_SECONDS = Histogram("mesh_index_upsert_seconds", "Vector upsert latency in Redis", ["model"])
QUERY_SECONDS = Histogram(
    "mesh_index_query_seconds",
    "Vector KNN query latency in Redis",
    ["model"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
UPSERTS = Counter("mesh_index_upserts_total", "Vectors upserted", ["model", "created"])


def request_vector(req: QueryRequest | UpsertRequest) -> np.ndarray | list[float]:
    """The request's vector: ``vector_f32`` (float32 bytes) when given, else the JSON list ``vector``."""
    if req.vector_f32 is None:
        return req.vector
    if req.vector or len(req.vector_f32) % 4:
        raise PermanentError(
            "give either vector (numbers) or vector_f32 (float32 bytes, a multiple of 4 long)",
            code="bad_vector",
        )
    return np.frombuffer(req.vector_f32, dtype="<f4")


class Indexer:
    """The service's handlers, over one ``VectorIndex`` (and the groups ``keeper``, None: groups on demand only)."""

    def __init__(self, index: VectorIndex, keeper: GroupKeeper | None = None) -> None:
        self.index = index
        self.keeper = keeper

    async def upsert(self, req: UpsertRequest) -> UpsertReply:
        start = time.perf_counter()
        vector = request_vector(req)
        created, changed = await self.index.upsert_changed(
            req.model, req.image_id, vector, req.tags, labels=req.labels
        )
        if self.keeper is not None:  # after the write: a racing upsert's range query may find this vector now
            await self.keeper.upserted(
                req.model, req.image_id, np.asarray(vector, np.float32), changed=changed
            )
        elapsed = time.perf_counter() - start
        UPSERT_SECONDS.labels(req.model).observe(elapsed)
        UPSERTS.labels(req.model, str(created).lower()).inc()
        log.info(
            "index.upserted",
            image_id=req.image_id,
            model=req.model,
            created=created,
            ms=round(elapsed * 1e3, 2),
        )
        return UpsertReply(model=req.model, image_id=req.image_id, created=created)

    async def query(self, req: QueryRequest) -> QueryReply:
        start = time.perf_counter()
        hits = await self.index.query(
            req.model,
            request_vector(req),
            req.k,
            offset=req.offset,
            exclude_id=req.exclude_id,
            filters=req.filters,
            ef_runtime=req.ef_runtime,
            min_score=req.min_score,
        )
        elapsed = time.perf_counter() - start
        QUERY_SECONDS.labels(req.model).observe(elapsed)
        log.debug("index.queried", model=req.model, k=req.k, hits=len(hits), ms=round(elapsed * 1e3, 2))
        return QueryReply(model=req.model, results=hits)

    async def delete(self, req: DeleteRequest) -> DeleteReply:
        deleted = await self.index.delete(req.image_id, req.model)
        if self.keeper is not None:  # even when nothing was deleted: a retry after a failed leave repairs it
            await self.keeper.deleted(req.image_id, req.model)
        log.info("index.deleted", image_id=req.image_id, model=req.model, deleted=deleted)
        return DeleteReply(deleted=deleted)

    async def stats(self, req: StatsRequest) -> IndexStats:
        return await self.index.stats(req.model)

    async def groups(self, req: GroupsRequest) -> GroupsReply:
        """Near-duplicate groups of the model's index, one page of them.

        At a threshold whose groups are kept (the config's ``near_duplicate_threshold``, see
        ``group_keeper.py``) the page is read from the stored groups: O(log N + page) Redis work, whatever the
        index's size, and no cap. At any other threshold, or while the kept groups are still being built, they
        are computed on demand for an index of at most ``max_images`` images: a SCAN of the model's keys, one
        HGET and one ``VECTOR_RANGE`` query per image (pipelined, 100 at a time), O(N) Redis work, refused
        part-way (``too_many_pairs``) once the pairs found pass ``MAX_PAIRS_PER_IMAGE`` per image (at a cut
        that low nearly everything is near everything: 2,000 images at cosine 0.01 made 1.5 million pairs,
        35 s of the indexer on this machine). Over ``max_images``: refused, naming the kept threshold (or 503
        ``groups_building`` while the kept groups at this threshold are being built).
        """
        if not 0 < req.threshold <= 1:
            raise PermanentError("threshold must be > 0 and <= 1", code="bad_threshold")
        if not 1 <= req.limit <= 1000 or not 1 <= req.max_neighbors <= 10_000:
            raise PermanentError("need 1 <= limit <= 1000 and 1 <= max_neighbors <= 10000", code="bad_limit")
        start = time.perf_counter()
        page = None
        if self.keeper is not None:
            page = await self.keeper.page(req.model, req.threshold, req.cursor, req.limit)
            if page.status == "ready":
                images = (await self.index.stats(req.model)).num_docs
                log.info(
                    "index.groups",
                    model=req.model,
                    kept=True,
                    images=images,
                    groups=page.total_groups,
                    ms=round((time.perf_counter() - start) * 1e3, 1),
                )
                return GroupsReply(
                    model=req.model,
                    threshold=req.threshold,
                    groups=list(page.groups),
                    next_cursor=page.next_cursor,
                    images=images,
                    total_groups=page.total_groups,
                    kept=True,
                )
        images = (await self.index.stats(req.model)).num_docs
        if images > req.max_images:
            raise await self._refusal(req, images, page)
        ids = await self.index.image_ids(req.model)
        vectors = await self.index.vectors(req.model, ids)
        near = await self.index.neighbors(
            req.model,
            vectors,
            req.threshold,
            req.max_neighbors,
            max_hits=MAX_PAIRS_PER_IMAGE * len(ids),
            epsilon=RANGE_EPSILON,  # as the kept groups' queries: the two answers agree
        )
        edges = [(a, hit.image_id) for a, hits in near.items() for hit in hits]
        groups = duplicates.connected_components(vectors, edges)
        chunk, next_cursor = duplicates.page(groups, req.cursor, req.limit)
        log.info(
            "index.groups",
            model=req.model,
            kept=False,
            images=len(ids),
            groups=len(groups),
            ms=round((time.perf_counter() - start) * 1e3, 1),
        )
        return GroupsReply(
            model=req.model,
            threshold=req.threshold,
            groups=chunk,
            next_cursor=next_cursor,
            images=len(ids),
            total_groups=len(groups),
        )

    async def _refusal(self, req: GroupsRequest, images: int, page: GroupsPage | None) -> MeshError:
        """Why groups over ``max_images`` are not computed on demand: the kept ones are being built (retry), or
        they are kept at another threshold only (named)."""
        if page is not None and page.status == "building":
            return RetryableError(
                f"the groups of {req.model} at {req.threshold} are being built ({page.scanned} of {images} "
                "images joined so far): retry later",
                code="groups_building",
            )
        kept = await self.keeper.kept_thresholds(req.model) if self.keeper is not None else []
        where = (
            f"ask at the kept near_duplicate_threshold {' or '.join(map(repr, kept))}"
            if kept
            else "no threshold is kept for this model (only the active model's are)"
        )
        return PermanentError(
            f"index of {req.model} holds {images} images, over max_images={req.max_images} for groups computed "
            f"on demand at threshold {req.threshold}: {where}",
            code="too_many_images",
        )

    def endpoints(self) -> dict[str, Callable[[Request], Awaitable[None]]]:
        return {
            contract.INDEX_UPSERT: typed(self.upsert, UpsertRequest),
            contract.INDEX_QUERY: typed(self.query, QueryRequest),
            contract.INDEX_DELETE: typed(self.delete, DeleteRequest),
            contract.INDEX_STATS: typed(self.stats, StatsRequest),
            contract.INDEX_GROUPS: typed(self.groups, GroupsRequest),
        }


async def main(settings: Settings) -> None:
    """Run the indexer until SIGTERM: its service, and the kept groups' upkeep beside it. The upkeep stops
    first; the index and the group store (the outer contexts) close after the service has drained."""
    async with (
        VectorIndex.from_settings(settings, user="indexer") as index,
        GroupStore.from_settings(settings, user="indexer") as store,
        ActorProcess(contract.INDEXER_SERVICE, settings, settings.indexer_http_port) as proc,
        ConfigClient.from_settings(proc.nc, settings) as config,
    ):
        keeper = GroupKeeper(index, store)
        indexer = Indexer(index, keeper)

        @proc.http.get("/ready")
        async def ready() -> JSONResponse:
            try:
                await index.ping()
            except RetryableError as e:
                return JSONResponse({"status": "unavailable", "redis": e.message}, status_code=503)
            return JSONResponse({"status": "ready"})

        await proc.add_service(
            contract.INDEXER_SERVICE, "Per-model vector indexes (Redis HNSW)", indexer.endpoints()
        )
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(GroupUpkeep(keeper, config).run(stop), name="groups")  # actors/group_upkeep.py
            await proc.stopped()
            stop.set()
