"""Similarity queries on a planted index: raw FT.SEARCH KNN at a given EF_RUNTIME, GET /images/{id}/similar
through the gateway, the indexer's ``index.query`` over NATS, and recall@10 against brute-force neighbours.

Vectors go straight into the model's index (pipelined HSET in the ``VectorIndex`` key format: the index is
created by the adapter, with the indexer's HNSW parameters). Query vectors are held out of the index; for the
gateway they get workflow records and stored embeddings (``WorkflowStore``), which is all ``/similar`` reads.
The exact neighbours come from numpy (cosine, brute force).
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
from ops.bench.stack import BenchStack
from ops.bench.stats import percentile

K = 10


@dataclass
class QuerySet:
    """Held-out query images: their ids, vectors and exact ``K`` nearest ids in the index."""

    ids: list[str]
    vectors: np.ndarray
    exact: list[set[str]]


def index_ids(model: str, n: int) -> list[str]:
    return [f"{model}-{i:07d}" for i in range(n)]


def exact_neighbours(
    base: np.ndarray, base_ids: list[str], queries: np.ndarray, k: int = K
) -> list[set[str]]:
    """Each query's ``k`` nearest ids in ``base`` by cosine similarity: brute force, 256 queries at a time."""
    b = base / np.linalg.norm(base, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    out: list[set[str]] = []
    for lo in range(0, len(q), 256):
        sims = q[lo : lo + 256] @ b.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        out += [{base_ids[int(i)] for i in row} for row in top]
    return out


async def plant(
    bench: BenchStack, model: str, ids: list[str], vectors: np.ndarray, batch: int = 2000
) -> float:
    """Fill ``model``'s index with ``vectors`` (pipelined HSET), wait for Redis to settle; insert seconds."""
    s = bench.settings
    async with VectorIndex.from_settings(s) as index:
        await index.ensure_index(model, int(vectors.shape[1]))
        key_prefix, index_name = index.key_prefix(model), index.index_name(model)
    r = redis.Redis.from_url(s.redis_server_url)
    start = time.perf_counter()
    try:
        for lo in range(0, len(ids), batch):
            pipe = r.pipeline(transaction=False)
            for i in range(lo, min(len(ids), lo + batch)):
                vec = np.ascontiguousarray(vectors[i], dtype=np.float32)
                pipe.hset(
                    key_prefix + ids[i],
                    mapping={ID_FIELD: ids[i], TAGS_FIELD: "", VECTOR_FIELD: vec.tobytes()},
                )
            pipe.execute()
    finally:
        r.close()
    insert_s = time.perf_counter() - start
    wait_quiet(s.redis_server_url, index_name)
    return insert_s


async def give_records(bench: BenchStack, model: str, qs: QuerySet) -> None:
    """Workflow records (``done`` under ``model``) and stored embeddings for the query images."""
    s = bench.settings
    store = WorkflowStore(s.redis_server_url, s.redis_prefix)
    try:
        for image_id, vec in zip(qs.ids, qs.vectors, strict=True):
            now = time.time()
            rec = ImageRecord(
                image_id=image_id,
                status=Status.DONE,
                sha256=hashlib.sha256(image_id.encode()).hexdigest(),  # unique per image
                object_key=f"bench/{image_id}",
                content_type="image/jpeg",
                size_bytes=1,
                width=1,
                height=1,
                created_at=now,
                updated_at=now,
                model=model,
                embedding_dim=int(vec.shape[0]),
                trace_id=f"bench-{image_id}",  # an empty string would read back as null
            )
            await store.create(rec)
            await store.set_embedding(model, image_id, np.ascontiguousarray(vec, dtype=np.float32))
    finally:
        await store.close()


def wait_quiet(redis_url: str, index_name: str, timeout_s: float = 1800) -> None:
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
class Pass:
    """One pass over a query set: latency percentiles (ms) and recall@10 against the exact neighbours."""

    p50_ms: float
    p99_ms: float
    recall_at_10: float

    @classmethod
    def of(cls, seconds: list[float], found: int, n_queries: int) -> Pass:
        return cls(1000 * percentile(seconds, 50), 1000 * percentile(seconds, 99), found / (K * n_queries))


def raw_pass(bench: BenchStack, model: str, qs: QuerySet, ef: int, exclude: bool, warmup: int = 10) -> Pass:
    """``FT.SEARCH`` KNN 10 at EF_RUNTIME ``ef`` for each query, through redis-py, the query built by the
    mesh's ``VectorIndex``; ``exclude``: with the ``-@image_id:{query}`` pre-filter ``/similar`` adds."""
    # the adapter only builds the query (its client never connects): sync redis-py runs the search
    index = VectorIndex.from_settings(bench.settings)
    ft = redis.Redis.from_url(bench.settings.redis_server_url)
    times: list[float] = []
    found = 0
    try:
        search = ft.ft(index.index_name(model))
        order = list(range(min(warmup, len(qs.ids)))) + list(range(len(qs.ids)))
        for j, i in enumerate(order):
            q = index.build_query(qs.vectors[i], K, exclude_id=qs.ids[i] if exclude else None, ef_runtime=ef)
            t0 = time.perf_counter()
            res = search.search(q, query_params=q.params)
            dt = time.perf_counter() - t0
            if j >= warmup:
                times.append(dt)
                found += len({str(getattr(d, ID_FIELD)) for d in res.docs} & qs.exact[i])
    finally:
        ft.close()
    return Pass.of(times, found, len(qs.ids))


def gateway_pass(bench: BenchStack, qs: QuerySet, warmup: int = 10) -> Pass:
    """``GET /images/{id}/similar?k=10`` for each query (the gateway's EF_RUNTIME: the Config DB's)."""
    times: list[float] = []
    found = 0
    with httpx.Client(base_url=bench.base_url, timeout=30) as client:
        order = list(range(min(warmup, len(qs.ids)))) + list(range(len(qs.ids)))
        for j, i in enumerate(order):
            t0 = time.perf_counter()
            resp = client.get(f"/images/{qs.ids[i]}/similar", params={"k": K})
            dt = time.perf_counter() - t0
            if resp.status_code != 200:
                raise RuntimeError(f"/similar for {qs.ids[i]}: HTTP {resp.status_code} {resp.text[:300]}")
            if j >= warmup:
                times.append(dt)
                found += len({h["image_id"] for h in resp.json()["results"]} & qs.exact[i])
    return Pass.of(times, found, len(qs.ids))


async def nats_pass(bench: BenchStack, model: str, qs: QuerySet, ef: int, warmup: int = 10) -> float:
    """p50 ms of the same queries through the indexer's ``index.query`` over NATS (what the gateway used to
    call): the price of the actor hop, for comparison with the gateway's direct read."""
    nc = await connect_nats(bench.settings, "gateway", name="bench")
    times: list[float] = []
    try:
        client = IndexClient(nc)
        order = list(range(min(warmup, len(qs.ids)))) + list(range(len(qs.ids)))
        for j, i in enumerate(order):
            t0 = time.perf_counter()
            await client.query(model, qs.vectors[i], K, exclude_id=qs.ids[i], ef_runtime=ef)
            if j >= warmup:
                times.append(time.perf_counter() - t0)
    finally:
        await nc.close()
    return 1000 * percentile(times, 50)
