"""The benchmarks at a tiny size against their own small stack: every figure is produced and sane.

No timing thresholds here (a shared 2-core CI box makes them meaningless); ``make bench`` measures.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.bench.plan import SMOKE
from ops.bench.realistic import realistic_vectors
from ops.bench.recall import EF_SWEEP
from ops.bench.report import HEADLINES, markdown, summary
from ops.bench.runner import Runner
from ops.bench.stack import BenchStack


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchStack]:
    """EfficientNet-Lite0 and the tiny random CLIP, on free ports in a temporary folder."""
    repository = tmp_path_factory.mktemp("bench_models")
    stack = BenchStack.start(
        tmp_path_factory.mktemp("bench") / "stack",
        timeout_s=240,
        models="efficientnet_lite0,clip",
        model_repository=repository,
    )
    try:
        yield stack
    finally:
        stack.close()


@pytest.mark.timeout(400)
async def test_every_benchmark_produces_sane_figures(bench: BenchStack, tmp_path: Path) -> None:
    repository = bench.settings.model_repository
    runner = Runner(SMOKE, bench, repository, tmp_path)
    results = await runner.run()
    data = summary(results, SMOKE, dt.datetime.now().astimezone(), 1.0)

    assert set(HEADLINES) <= set(data), sorted(set(HEADLINES) - set(data))
    for name, fig in data["figures"].items():
        assert fig["n"] == SMOKE.reps, name
        assert math.isfinite(fig["median"]) and fig["min"] <= fig["median"] <= fig["max"], name
        if "recall" in name:
            assert 0.0 <= fig["median"] <= 1.0, name
        elif "overhead" not in name:  # a difference of two latencies; everything else is a rate or a time
            assert fig["median"] > 0, name
    d = data["details"]
    # the query path really answered from the realistic index: results overlap the brute-force neighbours
    assert data["recall_at_10"] > 0.5 and d["realistic"]["dim"] == 1280 and not d["realistic"]["cached"]
    assert d["realistic"]["index_vectors"] == SMOKE.realistic_n
    assert d["ef_runtime"]["chosen"] in EF_SWEEP and data["ef_runtime_shipped"] == d["ef_runtime"]["chosen"]
    for ef in EF_SWEEP:
        assert (
            data["figures"][f"query_raw_p99_ms_ef{ef}"]["median"]
            >= data["figures"][f"query_raw_p50_ms_ef{ef}"]["median"]
        )
    assert data["query_p50_ratio"] > 0
    # the baseline used the batch the scan found best, the coordinator's draft target and the config's steps
    for key in ("clip", "default"):
        assert d[f"baseline_{key}"]["batch"] == d[f"ort_best_batch_{key}"]
        assert d[f"baseline_{key}"]["pipeline_steps"] == []
    assert d["baseline_default"]["draft_target"] == 256
    assert data["triton_ratio"] == min(data["triton_ratio_clip"], data["triton_ratio_default"])
    assert d["stack"]["log_level"] == d["stack"]["log_level_default"]
    assert d["stages_clip"]["embed"]["count"] >= SMOKE.ingest_clip_n
    for key in ("fp32", "int8"):
        assert 0.0 <= d[f"sibling_recall_at_4_{key}_default"] <= 1.0
    # label search ran through the mesh in labels mode, on every photo with a known class
    lab = d["labels"]
    assert lab["errors"] == 0 and lab["images"] > lab["copies_per_photo"] * lab["photos_with_known_class"]
    assert {w["mode"] for w in lab["per_word"].values()} == {"labels"}
    assert 0 <= lab["precision"] <= 1 and 0 <= lab["recall"] <= 1 and lab["labels_step_ms_per_image"] > 0
    # the copy tier was measured on its evaluation split, and the mesh's checker verified pairs meanwhile
    copies = d["copies"]
    assert copies["size"] == "reduced" and 0 <= data["figures"]["copy_precision"]["median"] <= 1
    assert d["copy_check_mesh"]["per_image_ms"]["n"] > 0
    report = markdown(data, SMOKE)
    assert "## Label search" in report and "## Copies apart from look-alikes" in report
    assert "| `ingest_ratio` |" in report and "cores" in report and "## Conditions" in report
    (tmp_path / "summary.json").write_text(json.dumps(data, indent=1))  # it must serialize; kept to read
    # the realistic vectors are cached: a second query step embeds nothing
    m = runner.models[runner.default]
    n = SMOKE.realistic_n + SMOKE.tune_queries + SMOKE.eval_queries
    again = realistic_vectors(m.onnx, m.spec, n, tmp_path / "vectors")
    assert again.cached and again.first_embed["runs"]
