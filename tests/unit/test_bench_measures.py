"""The benchmark's own arithmetic, without a stack: choosing EF_RUNTIME, brute-force neighbours, the realistic
vectors' cache and composites, and a report whose headline keys and conditions come from the run alone.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors.contract import PreprocessSpec
from ops.bench import realistic
from ops.bench.plan import FULL, QUICK, SMOKE
from ops.bench.query import exact_neighbours
from ops.bench.recall import EF_SWEEP, choose_ef
from ops.bench.report import HEADLINES, markdown, summary
from ops.bench.stats import Results

SPEC = PreprocessSpec(resize=256, crop=224)


def test_the_shipped_ef_is_the_smallest_reaching_the_target_or_the_largest_tried() -> None:
    assert choose_ef({10: 0.8, 50: 0.951, 100: 0.97, 200: 0.99, 400: 1.0}) == 50
    assert choose_ef({400: 0.96, 10: 0.95, 50: 0.99}) == 10
    assert choose_ef({10: 0.5, 50: 0.7, 400: 0.9}) == 400
    assert EF_SWEEP == (10, 50, 100, 200, 400)


def test_exact_neighbours_are_the_cosine_top_10() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(600, 16)).astype(np.float32)
    ids = [f"v{i}" for i in range(600)]
    queries = rng.normal(size=(300, 16)).astype(np.float32) * 3  # scale must not matter (cosine)
    got = exact_neighbours(base, ids, queries)
    b = base / np.linalg.norm(base, axis=1, keepdims=True)
    for q, found in zip(queries, got, strict=True):
        order = np.argsort(-(b @ (q / np.linalg.norm(q))))
        assert found == {ids[i] for i in order[:10]}


def test_the_quick_plan_has_the_issues_sizes() -> None:
    assert QUICK.realistic_n == FULL.realistic_n == 100_000
    assert QUICK.tune_queries >= 100 and QUICK.eval_queries >= 100 and QUICK.reps == 3
    assert SMOKE.realistic_n <= 2_000 and SMOKE.reps == 1


def test_composites_are_reproducible_and_different() -> None:
    a, b, c = realistic.composite(0, 5), realistic.composite(0, 5), realistic.composite(0, 6)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a)[:200, :200], np.asarray(c)[:200, :200])
    assert min(a.size) >= realistic.OUT_SIDE and a.mode == "RGB"


def test_the_vectors_are_cached_by_model_file_and_only_missing_rows_are_embedded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedded: list[tuple[int, int]] = []

    def fake_embed(session: Any, spec: PreprocessSpec, start: int, stop: int, seed: int = 0, batch: int = 32):
        embedded.append((start, stop))
        return np.arange(start, stop, dtype=np.float32)[:, None].repeat(4, 1) + 1

    monkeypatch.setattr(realistic, "embed_range", fake_embed)
    monkeypatch.setattr("ops.bench.ingest.ort_session", lambda path: object())
    model = tmp_path / "model.onnx"
    model.write_bytes(b"weights v1")
    cache = tmp_path / "vectors"

    first = realistic.realistic_vectors(model, SPEC, 30, cache)
    assert not first.cached and embedded == [(0, 30)] and first.vectors.shape == (30, 4)
    again = realistic.realistic_vectors(model, SPEC, 20, cache)
    assert again.cached and embedded == [(0, 30)] and np.array_equal(again.vectors, first.vectors[:20])
    assert again.first_embed["runs"][0]["to"] == 30  # the report can say what the first run cost
    longer = realistic.realistic_vectors(model, SPEC, 50, cache)
    assert embedded[-1] == (30, 50) and np.array_equal(longer.vectors[:30], first.vectors)

    model.write_bytes(b"weights v2")  # another model file: another cache entry
    realistic.realistic_vectors(model, SPEC, 10, cache)
    assert embedded[-1] == (0, 10) and len(list(cache.glob("realistic-*.npy"))) == 2


def _results() -> Results:
    res = Results()
    for name, values in {
        "triton_ratio_clip": [0.9, 0.92, 0.88],
        "triton_ratio_default": [0.6, 0.65, 0.7],
        "ingest_ratio_clip": [0.8, 0.8, 0.8],
        "ingest_ratio_default": [0.5, 0.5, 0.5],
        "ingest_ratio_temporal": [0.4, 0.4, 0.4],
        "recall_at_10": [0.96, 0.96, 0.96],
        "query_p50_overhead_ms": [1.0, 1.2, 1.1],
        "query_p99_overhead_ms": [2.0, 2.5, 2.2],
        "query_p50_ratio": [1.5, 1.7, 1.6],
        "upload_ratio": [0.6, 0.7, 0.65],
    }.items():
        res.add(name, values)
    res.details["ef_runtime"] = {
        "tuning_recall_at_10": {"10": 0.8, "50": 0.96},
        "chosen": 50,
        "target_reached": True,
        "config_default": 200,
    }
    res.details["realistic"] = {
        "model": "efficientnet_lite0",
        "dim": 1280,
        "index_vectors": 100_000,
        "tuning_queries": 200,
        "evaluation_queries": 300,
        "cache_file": "realistic-x.npy",
        "cached": True,
        "embed_s_this_run": 0.0,
        "first_embed": {"embed_seconds_total": 900.0, "cores": 2},
        "index_build_s": 240.0,
    }
    res.details["stack"] = {"log_level": "info", "log_level_default": "info"}
    return res


def test_the_summary_has_every_headline_key_and_the_report_no_typed_history() -> None:
    data = summary(_results(), QUICK, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), 60.0)
    assert set(HEADLINES) <= set(data)
    assert data["triton_ratio"] == data["triton_ratio_default"] == 0.65  # the lower model's
    assert data["targets_met"]["triton_ratio"] is False and data["targets_met"]["recall_at_10"] is True
    assert data["ef_runtime_shipped"] == 50 and "1280 dimensions" in data["recall_at_10_conditions"]
    report = markdown(data, QUICK)
    assert "->" not in report and "What the figures led to" not in report
    assert "It differs from the Config DB default `ef_runtime` = 200" in report
    assert "filling it took 900.0 s on 2 cores the first time" in report
    assert "log level `info`" in report
