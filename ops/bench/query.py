"""Similarity queries: GET /images/{id}/similar against raw FT.SEARCH KNN on the same index, and recall@10.

Vectors go straight into the model's index (pipelined HSET in the ``VectorIndex`` key format: the index is
created by the adapter, with the indexer's HNSW parameters), and the query images get workflow records and
stored embeddings (``WorkflowStore``), which is all ``/similar`` reads. The exact neighbours come from numpy.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import httpx
import numpy as np
import redis

from actors.adapters.index_client import IndexClient
from actors.adapters.vector_index import ID_FIELD, TAGS_FIELD, VECTOR_FIELD, VectorIndex
from actors.adapters.workflow_store import WorkflowStore
from actors.contract import ImageRecord, Status
from actors.runtime import connect_nats
from ops.bench.data import structured_vectors
from ops.bench.stack import BenchStack
from ops.bench.stats import percentile


@dataclass
class QueryIndex:
    model: str
    ids: list[str]
    vectors: np.ndarray
    queries: list[int]  # positions of the query images
    exact: list[set[str]]  # their exact 10 nearest others
    insert_s: float


def _ids(model: str, n: int) -> list[str]:
    return [f"{model}-{i:07d}" for i in range(n)]


async def build_index(
    bench: BenchStack, model: str, n: int, dim: int, n_queries: int, seed: int = 0, batch: int = 2000
) -> QueryIndex:
    """Fill ``model``'s index with ``n`` structured vectors; give ``n_queries`` of them workflow records."""
    s = bench.settings
    vectors = structured_vectors(n, dim, seed)
    ids = _ids(model, n)
    async with VectorIndex.from_settings(s) as index:
        await index.ensure_index(model, dim)
        key_prefix, index_name = index.key_prefix(model), index.index_name(model)
    r = redis.Redis.from_url(s.redis_server_url)
    start = time.perf_counter()
    try:
        for lo in range(0, n, batch):
            pipe = r.pipeline(transaction=False)
            for i in range(lo, min(n, lo + batch)):
                pipe.hset(
                    key_prefix + ids[i],
                    mapping={ID_FIELD: ids[i], TAGS_FIELD: "", VECTOR_FIELD: vectors[i].tobytes()},
                )
            pipe.execute()
    finally:
        r.close()
    insert_s = time.perf_counter() - start
    wait_quiet(s.redis_server_url, index_name)
    rng = np.random.default_rng(seed + 1)
    queries = [int(q) for q in rng.choice(n, size=min(n_queries, n), replace=False)]
    store = WorkflowStore(s.redis_server_url, s.redis_prefix)
    try:
        for q in queries:
            now = time.time()
            rec = ImageRecord(
                image_id=ids[q],
                status=Status.DONE,
                sha256=hashlib.sha256(ids[q].encode()).hexdigest(),  # unique per index and image
                object_key=f"bench/{ids[q]}",
                content_type="image/jpeg",
                size_bytes=1,
                width=1,
                height=1,
                created_at=now,
                updated_at=now,
                model=model,
                embedding_dim=dim,
                trace_id=f"bench-{q}",  # an empty string would read back as null
            )
            await store.create(rec)
            await store.set_embedding(model, ids[q], vectors[q])
    finally:
        await store.close()
    exact = []
    for q in queries:
        sims = vectors @ vectors[q]
        sims[q] = -np.inf
        top = np.argpartition(-sims, 10)[:10]
        exact.append({ids[i] for i in top})
    return QueryIndex(model, ids, vectors, queries, exact, insert_s)


def wait_quiet(redis_url: str, index_name: str, timeout_s: float = 900) -> None:
    """Wait until Redis is done with the after-effects of a bulk insert, which would land in the query figures
    (p50 of 160 ms seen): RediSearch's background scan of the keyspace (FT.CREATE starts one; it holds the main
    thread in chunks until FT.INFO ``indexing`` is 0), and the AOF rewrite / RDB save that hundreds of MB set
    off (a fork plus disk writes on one of two cores)."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    deadline = time.monotonic() + timeout_s
    busy = ("aof_rewrite_in_progress", "aof_rewrite_scheduled", "rdb_bgsave_in_progress")
    try:
        while time.monotonic() < deadline:
            info = r.info("persistence")
            scanning = int(r.ft(index_name).info().get("indexing", 0))
            if not scanning and not any(int(info.get(k, 0)) for k in busy):
                return
            time.sleep(1)
        raise RuntimeError(f"Redis still busy with {index_name} after {timeout_s:.0f} s")
    finally:
        r.close()


@dataclass
class QueryRun:
    gateway_p50_ms: float
    gateway_p99_ms: float
    raw_p50_ms: float
    raw_p99_ms: float
    raw_plain_p50_ms: float
    recall_at_10: float
    raw_recall_at_10: float


def _search(
    r: redis.Redis, index: VectorIndex, model: str, vec: np.ndarray, exclude: str | None, ef: int
) -> list[str]:
    q = index.build_query(vec, 10, exclude_id=exclude, ef_runtime=ef)
    res = r.ft(index.index_name(model)).search(q, query_params=q.params)
    return [str(getattr(d, ID_FIELD)) for d in res.docs]


def query_pass(bench: BenchStack, qi: QueryIndex, ef_runtime: int, warmup: int = 10) -> QueryRun:
    """One pass over the query images: through the gateway, then raw FT.SEARCH with the same query."""
    s = bench.settings
    gw: list[float] = []
    raw: list[float] = []
    plain: list[float] = []
    found_gw = found_raw = 0
    # the adapter only builds the query (its client never connects): sync redis-py runs the raw search
    index = VectorIndex.from_settings(s)
    r = redis.Redis.from_url(s.redis_server_url)
    try:
        with httpx.Client(base_url=bench.base_url, timeout=30) as client:
            order = qi.queries[:warmup] + qi.queries
            for j, q in enumerate(order):
                t0 = time.perf_counter()
                resp = client.get(f"/images/{qi.ids[q]}/similar", params={"k": 10})
                dt = time.perf_counter() - t0
                if resp.status_code != 200:
                    raise RuntimeError(f"/similar for {qi.ids[q]}: HTTP {resp.status_code} {resp.text[:300]}")
                if j >= warmup:
                    gw.append(dt)
                    got = {h["image_id"] for h in resp.json()["results"]}
                    found_gw += len(got & qi.exact[j - warmup])
        for j, q in enumerate(qi.queries[:warmup] + qi.queries):
            vec = qi.vectors[q]
            t0 = time.perf_counter()
            got_ids = _search(r, index, qi.model, vec, qi.ids[q], ef_runtime)
            t1 = time.perf_counter()
            _search(r, index, qi.model, vec, None, ef_runtime)
            t2 = time.perf_counter()
            if j >= warmup:
                raw.append(t1 - t0)
                plain.append(t2 - t1)
                found_raw += len(set(got_ids) & qi.exact[j - warmup])
    finally:
        r.close()
    n = 10 * len(qi.queries)
    return QueryRun(
        gateway_p50_ms=1000 * percentile(gw, 50),
        gateway_p99_ms=1000 * percentile(gw, 99),
        raw_p50_ms=1000 * percentile(raw, 50),
        raw_p99_ms=1000 * percentile(raw, 99),
        raw_plain_p50_ms=1000 * percentile(plain, 50),
        recall_at_10=found_gw / n,
        raw_recall_at_10=found_raw / n,
    )


async def nats_pass(bench: BenchStack, qi: QueryIndex, ef_runtime: int, warmup: int = 10) -> float:
    """p50 ms of the same queries through the indexer's ``index.query`` over NATS (what the gateway used to
    call): the price of the actor hop, for comparison with the gateway's direct read."""
    nc = await connect_nats(bench.settings, "gateway", name="bench")
    times: list[float] = []
    try:
        client = IndexClient(nc)
        for j, q in enumerate(qi.queries[:warmup] + qi.queries):
            t0 = time.perf_counter()
            await client.query(qi.model, qi.vectors[q], 10, exclude_id=qi.ids[q], ef_runtime=ef_runtime)
            if j >= warmup:
                times.append(time.perf_counter() - t0)
    finally:
        await nc.close()
    return 1000 * percentile(times, 50)
