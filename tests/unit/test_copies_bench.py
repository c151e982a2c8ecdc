"""The copies benchmark (``ops/bench/copies.py``) at its reduced size (about 10 s on 2 cores, so it is a unit
test): every kind of pair is made, measured by every tier, and the figures have their shape. No target is
asserted here (``python -m ops.bench.copies`` measures at full size); a shared 2-core CI box makes the timings
meaningless, so they are only checked sane.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from ops.bench import copies as bench
from ops.bench.copy_pairs import SINGLE_EDITS, STEREO

COPY_KINDS = {f"copy_{kind}" for kind in (*SINGLE_EDITS, "combined")}
HARD_KINDS = {"photo_parts", "texture_parts", "burst", "same_scene"}
TIERS = ("copy_tier", "verify", "cosine_deployed", "cosine_best")


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    return bench.run("reduced", seed=0)


def _rate(value: float) -> bool:
    return 0.0 <= value <= 1.0


@pytest.mark.timeout(120)
def test_every_kind_of_pair_is_made_and_the_splits_share_no_photo(figures: dict[str, Any]) -> None:
    json.dumps(figures)  # it must serialize: `python -m ops.bench.copies` prints it
    tuning, evaluation = figures["sources"]["tuning"], figures["sources"]["evaluation"]
    assert not set(tuning) & set(evaluation) and STEREO in evaluation
    kinds = figures["evaluation"]["pairs"]["by_kind"]
    assert set(kinds) == COPY_KINDS | HARD_KINDS | {"different"}, sorted(kinds)
    assert all(n > 0 for n in kinds.values())
    pairs = figures["evaluation"]["pairs"]
    assert pairs["copies"] == sum(n for k, n in kinds.items() if k in COPY_KINDS)
    assert pairs["hard_negatives"] == sum(n for k, n in kinds.items() if k in HARD_KINDS)
    assert pairs["easy_negatives"] == kinds["different"]
    # the tuning split: its photos' pairs and the synthetic hard cases made from them (views of one scene,
    # brick walls, cloned textures, with copies of each)
    assert set(figures["tuning"]["pairs"]["by_kind"]) == COPY_KINDS | HARD_KINDS | {
        "different",
        "copy_synthetic",
    }
    fresh = figures["fresh_pairs"]
    assert fresh["pairs_seed"] == figures["seed"] + 1 and fresh["pairs"]["copies"] == pairs["copies"]


def test_the_synthetic_tuning_cases_come_from_tuning_photos_only() -> None:
    from ops.bench.copy_pairs import COUNTS, split
    from ops.bench.copy_synthetic import synthetic_pairs

    parts = split(0)
    made = list(synthetic_pairs(parts.tuning[:2], COUNTS["reduced"], 0))
    assert {p.source for p in made} <= set(parts.tuning[:2])
    assert {p.kind for p in made} == {"texture_parts", "same_scene", "copy_synthetic"}
    assert all(p.copy == (p.kind == "copy_synthetic") for p in made)
    views = [p for p in made if p.kind == "same_scene"]
    assert views and all(p.a.size != (0, 0) and p.a.tobytes() != p.b.tobytes() for p in views)


@pytest.mark.timeout(120)
def test_every_tier_has_precision_and_recall_overall_and_on_hard_negatives(figures: dict[str, Any]) -> None:
    evaluation = figures["evaluation"]
    assert set(evaluation["tiers"]) == set(TIERS)
    for tier in TIERS:
        for subset in ("all", "copies_vs_hard_negatives", "without_same_scene"):
            fig = evaluation["tiers"][tier][subset]
            assert _rate(fig["precision"]) and _rate(fig["recall"]), (tier, subset)
            assert fig["tp"] + fig["fn"] == (evaluation["pairs"]["copies"]), (
                tier,
                subset,
            )  # every copy is counted once
        assert _rate(evaluation["tiers"][tier]["hard_negative_false_positive_rate"])
    for kind, row in evaluation["by_kind"].items():
        assert row["n"] == evaluation["pairs"]["by_kind"][kind]
        assert all(_rate(row[f"{tier}_says_copy"]) for tier in TIERS), kind
    thresholds = evaluation["cosine_thresholds"]
    assert -1.0 <= thresholds["best_f1_on_this_set"] <= 1.0 and thresholds["deployed"] > 0
    stage = evaluation["candidate_stage"]
    assert 0 <= stage["copies_below_deployed_cosine"] <= evaluation["pairs"]["copies"]
    # the copy tier is the cosine candidate stage then verify: it can only say copy where both do
    tier, verify = evaluation["tiers"]["copy_tier"]["all"], evaluation["tiers"]["verify"]["all"]
    assert tier["tp"] <= verify["tp"] and tier["fp"] <= verify["fp"]


@pytest.mark.timeout(120)
def test_timings_and_sizes_are_sane(figures: dict[str, Any]) -> None:
    for name in ("features_per_image", "verify_per_pair"):
        t = figures["timing_ms"][name]
        assert t["n"] > 0 and math.isfinite(t["p99"]) and 0 < t["p50"] <= t["p99"], name
    size = figures["features_bytes"]
    assert 0 < size["median"] <= size["max"] <= 64_000
    assert figures["thresholds"]["min_inliers"] > 0
