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
    results = await Runner(SMOKE, bench, repository, tmp_path).run()
    data = summary(results, SMOKE, dt.datetime.now().astimezone(), 1.0)

    assert set(HEADLINES) <= set(data), sorted(set(HEADLINES) - set(data))
    for name, fig in data["figures"].items():
        assert fig["n"] == SMOKE.reps, name
        assert math.isfinite(fig["median"]) and fig["min"] <= fig["median"] <= fig["max"], name
        if "recall" in name:
            assert 0.0 <= fig["median"] <= 1.0, name
        elif "overhead" not in name:  # a difference of two latencies; everything else is a rate or a time
            assert fig["median"] > 0, name
    # the query path really answered from the index: the mesh's results overlap the exact neighbours
    assert data["recall_at_10"] > 0.5
    assert data["details"]["stages_clip"]["embed"]["count"] >= SMOKE.ingest_clip_n
    for key in ("fp32", "int8"):
        assert 0.0 <= data["details"][f"sibling_recall_at_4_{key}_default"] <= 1.0
    report = markdown(data, SMOKE)
    assert "| `ingest_ratio` |" in report and "cores" in report
    json.dumps(data)  # summary.json must serialize
