"""The indexer service, as its callers see it: typed calls over NATS request/reply."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nats.aio.client import Client

from actors import contract
from actors.contract import (
    DeleteReply,
    DeleteRequest,
    GroupsReply,
    GroupsRequest,
    Hit,
    IndexStats,
    QueryReply,
    QueryRequest,
    StatsRequest,
    UpsertReply,
    UpsertRequest,
)
from actors.rpc import call


def _f32(vector: np.ndarray | Sequence[float]) -> bytes:
    """A vector as little-endian float32 bytes: what ``vector_f32`` of the index messages carries."""
    return np.asarray(vector, dtype="<f4").tobytes()


class IndexClient:
    def __init__(self, nc: Client, timeout_s: float = 10.0) -> None:
        self._nc = nc
        self._timeout = timeout_s

    async def upsert(
        self,
        model: str,
        image_id: str,
        vector: np.ndarray,
        tags: dict[str, str] | None = None,
        trace_id: str = "",
        labels: dict[str, float] | None = None,
    ) -> UpsertReply:
        req = UpsertRequest(
            model=model, image_id=image_id, vector_f32=_f32(vector), tags=tags or {}, labels=labels or {}
        )
        headers = {contract.TRACE_HEADER: trace_id} if trace_id else None
        return await call(self._nc, contract.INDEX_UPSERT, req, UpsertReply, self._timeout, headers=headers)

    async def query(
        self,
        model: str,
        vector: np.ndarray | Sequence[float],
        k: int,
        *,
        offset: int = 0,
        exclude_id: str | None = None,
        filters: dict[str, str] | None = None,
        ef_runtime: int | None = None,
        min_score: float | None = None,
    ) -> list[Hit]:
        req = QueryRequest(
            model=model,
            vector_f32=_f32(vector),
            k=k,
            offset=offset,
            exclude_id=exclude_id,
            filters=filters or {},
            min_score=min_score,
        )
        if ef_runtime is not None and hasattr(req, "ef_runtime"):
            req.ef_runtime = ef_runtime
        reply = await call(self._nc, contract.INDEX_QUERY, req, QueryReply, self._timeout)
        return reply.results

    async def delete(self, image_id: str, model: str | None = None) -> int:
        reply = await call(
            self._nc,
            contract.INDEX_DELETE,
            DeleteRequest(image_id=image_id, model=model),
            DeleteReply,
            self._timeout,
        )
        return reply.deleted

    async def stats(self, model: str) -> IndexStats:
        return await call(
            self._nc, contract.INDEX_STATS, StatsRequest(model=model), IndexStats, self._timeout
        )

    async def groups(
        self, model: str, threshold: float, *, limit: int = 50, cursor: str = "", timeout_s: float = 60.0
    ) -> GroupsReply:
        """One page of near-duplicate groups (O(N) work in the indexer: a longer timeout than queries)."""
        req = GroupsRequest(model=model, threshold=threshold, limit=limit, cursor=cursor)
        return await call(self._nc, contract.INDEX_GROUPS, req, GroupsReply, timeout_s)
