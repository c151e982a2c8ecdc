"""The query benchmark on realistic vectors: EF_RUNTIME chosen on one held-out query set, figures on another.

The index holds ``plan.realistic_n`` embeddings of the default model (``ops.bench.realistic``: composites of
scikit-image's photos, embedded in-process, cached by the model file's hash). The next
``plan.tune_queries`` composites are the tuning set: raw ``FT.SEARCH`` KNN 10 at each EF_RUNTIME of
``EF_SWEEP`` on them chooses the shipped value, the smallest whose recall@10 reaches ``RECALL_TARGET`` (the
largest when none does, and the details say so). The ``plan.eval_queries`` after those are the evaluation
set: recall@10 and p50/p99 of raw KNN at every EF_RUNTIME, then ``GET /images/{id}/similar`` through the
gateway with the Config DB's ``ef_runtime`` set to the chosen value, against the same ``FT.SEARCH`` the
gateway sends (KNN 10 with the query image excluded, at the chosen EF_RUNTIME). Neither query set is in the
index; the exact neighbours come from brute force.
"""

from __future__ import annotations

import time
from pathlib import Path

from actors.adapters.vector_index import VectorIndex
from actors.contract import MeshConfig
from ops.bench import query
from ops.bench.ingest import ModelFiles
from ops.bench.plan import Plan
from ops.bench.query import QuerySet
from ops.bench.realistic import realistic_vectors
from ops.bench.stack import BenchStack
from ops.bench.stats import Results, ratios

EF_SWEEP = (10, 50, 100, 200, 400)
RECALL_TARGET = 0.95


def choose_ef(recalls: dict[int, float], target: float = RECALL_TARGET) -> int:
    """The smallest EF_RUNTIME whose recall@10 reaches ``target``; the largest tried when none does."""
    reaching = [ef for ef, r in sorted(recalls.items()) if r >= target]
    return reaching[0] if reaching else max(recalls)


async def realistic_queries(
    bench: BenchStack, plan: Plan, res: Results, m: ModelFiles, cache_dir: Path, config: MeshConfig
) -> None:
    """Every query figure of the run (see the module docstring); ``config``: the Config DB's, restored after."""
    n, n_tune, n_eval = plan.realistic_n, plan.tune_queries, plan.eval_queries
    vecs = realistic_vectors(m.onnx, m.spec, n + n_tune + n_eval, cache_dir)
    dim = int(vecs.vectors.shape[1])
    model = f"realistic{dim}_{n}"
    ids = query.index_ids(model, n)
    base = vecs.vectors[:n]

    def held_out(lo: int, hi: int, name: str) -> QuerySet:
        q = vecs.vectors[lo:hi]
        return QuerySet(
            [f"{model}-{name}-{i}" for i in range(hi - lo)], q, query.exact_neighbours(base, ids, q)
        )

    tune = held_out(n, n + n_tune, "tune")
    evaluation = held_out(n + n_tune, n + n_tune + n_eval, "eval")
    res.details["realistic"] = {
        "model": m.name,
        "dim": dim,
        "index_vectors": n,
        "tuning_queries": n_tune,
        "evaluation_queries": n_eval,
        "cache_file": vecs.path.name,
        "cached": vecs.cached,
        "embed_s_this_run": round(vecs.embed_s, 1),
        "first_embed": vecs.first_embed,
    }
    t0 = time.perf_counter()
    res.details["realistic"]["insert_s"] = round(await query.plant(bench, model, ids, base), 1)
    res.details["realistic"]["index_build_s"] = round(time.perf_counter() - t0, 1)

    tuning = {ef: query.raw_pass(bench, model, tune, ef, exclude=False).recall_at_10 for ef in EF_SWEEP}
    chosen = choose_ef(tuning)
    res.details["ef_runtime"] = {
        "tuning_recall_at_10": {str(ef): round(r, 4) for ef, r in tuning.items()},
        "chosen": chosen,
        "target_reached": tuning[chosen] >= RECALL_TARGET,
        "config_default": MeshConfig().ef_runtime,
    }
    for ef in EF_SWEEP:
        runs = [query.raw_pass(bench, model, evaluation, ef, exclude=False) for _ in range(plan.reps)]
        res.add(f"raw_recall_at_10_ef{ef}", [r.recall_at_10 for r in runs])
        res.add(f"query_raw_p50_ms_ef{ef}", [r.p50_ms for r in runs], "ms")
        res.add(f"query_raw_p99_ms_ef{ef}", [r.p99_ms for r in runs], "ms")

    await query.give_records(bench, model, evaluation)
    await bench.set_config("ef_runtime", chosen)
    await bench.set_config("active_model", model)  # /similar reads the query image's vector under it
    try:
        gw, raw = [], []
        for _ in range(plan.reps):
            gw.append(query.gateway_pass(bench, evaluation))
            raw.append(query.raw_pass(bench, model, evaluation, chosen, exclude=True))
        nats = [await query.nats_pass(bench, model, evaluation, chosen) for _ in range(plan.reps)]
    finally:
        await bench.set_config("ef_runtime", config.ef_runtime)
        await bench.set_config("active_model", config.active_model)
    res.add("recall_at_10", [g.recall_at_10 for g in gw])
    res.add("raw_recall_at_10", [r.recall_at_10 for r in raw])
    res.add("query_gateway_p50_ms", [g.p50_ms for g in gw], "ms")
    res.add("query_gateway_p99_ms", [g.p99_ms for g in gw], "ms")
    res.add("query_raw_p50_ms", [r.p50_ms for r in raw], "ms")
    res.add("query_raw_p99_ms", [r.p99_ms for r in raw], "ms")
    res.add("query_nats_p50_ms", nats, "ms")
    res.add("query_p50_overhead_ms", [g.p50_ms - r.p50_ms for g, r in zip(gw, raw, strict=True)], "ms")
    res.add("query_p99_overhead_ms", [g.p99_ms - r.p99_ms for g, r in zip(gw, raw, strict=True)], "ms")
    res.add("query_p50_ratio", ratios([g.p50_ms for g in gw], [r.p50_ms for r in raw]))
    async with VectorIndex.from_settings(bench.settings) as index:
        res.details["hnsw"] = {"m": index.hnsw.m, "ef_construction": index.hnsw.ef_construction}
        await index.drop(model)
