"""Copies versus look-alikes: how well each duplicate tier separates copies from pictures that look alike.

``actors.copies`` verifies that a candidate pair is a *copy* (one image is the other re-encoded, resized,
cropped keeping at least half, mirrored, rotated a few degrees, or changed in tone and colour). This module
measures it, and the cosine tier it refines, on the labelled pairs of ``ops.bench.copy_pairs`` (sample photos
split into a tuning and an evaluation set that share no source photo; see there what each kind of pair is).

Figures on the evaluation set: the copy tier as deployed (cosine >= the config's near-duplicate threshold, then
:func:`actors.copies.verify`), ``verify`` alone, cosine alone at the deployed threshold and at the threshold of
best F1 *on the evaluation set itself* (generous to the baseline), each over all negatives and over the hard
ones only; per kind; the copies the cosine candidate stage loses; and per-image ``features`` and per-pair
``verify`` times. Embeddings are the default model's (``ops.models.efficientnet``), fed the pixels
``actors.preprocess.to_pixels`` makes, so the cosines are the pipeline's.

``python -m ops.bench.copies [--reduced] [--seed N]`` prints the JSON of :func:`run`; ``--tune`` prints the
threshold sweep on the tuning set (:func:`tune`), which is how ``actors.copies``'s constants were chosen.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from actors import copies
from actors.contract import MeshConfig
from ops.bench.copy_pairs import COUNTS, Pair, Size, pairs, reduced_names, split
from ops.bench.copy_synthetic import synthetic_pairs
from ops.bench.stats import percentile

# --- measuring -------------------------------------------------------------------------------------------


class Embedder:
    """The default model's unit embeddings, batched: ``add`` queues an image, vectors come per batch."""

    def __init__(self, batch: int = 32) -> None:
        import torch

        from ops.models.efficientnet import SPEC, build

        self._torch = torch
        self._model = build()
        self._spec = SPEC
        self._batch = batch
        self._pending: list[np.ndarray] = []
        self.vectors: list[np.ndarray] = []

    def add(self, img: Image.Image) -> int:
        """Queue ``img``; returns the index its vector will have in ``vectors``."""
        from actors.preprocess import to_pixels

        self._pending.append(to_pixels(img, self._spec))
        index = len(self.vectors) + len(self._pending) - 1
        if len(self._pending) >= self._batch:
            self.flush()
        return index

    def flush(self) -> None:
        if not self._pending:
            return
        torch = self._torch
        with torch.no_grad():
            out = self._model(torch.from_numpy(np.stack(self._pending)))
        embedding = out[0] if isinstance(out, tuple) else out  # (embedding, probs) in newer exports
        vecs = embedding.detach().cpu().numpy().astype(np.float32)
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        self.vectors.extend(vecs)
        self._pending = []


@dataclass(frozen=True)
class Featured:
    """A pair's truth, the features of both sides and where their embeddings are (-1: not embedded)."""

    kind: str
    detail: str
    copy: bool
    hard: bool
    source: str
    a: copies.Features
    b: copies.Features
    vec_a: int
    vec_b: int


@dataclass(frozen=True)
class Scored:
    """A pair's truth and what each tier said about it."""

    pair: Featured
    verdict: copies.Verdict
    cosine: float

    @property
    def kind(self) -> str:
        return self.pair.kind

    @property
    def copy(self) -> bool:
        return self.pair.copy

    @property
    def hard(self) -> bool:
        return self.pair.hard


@dataclass
class Measured:
    """A split's scored pairs, with the times and sizes taken on the way."""

    scored: list[Scored] = field(default_factory=list)
    features_ms: list[float] = field(default_factory=list)
    verify_ms: list[float] = field(default_factory=list)
    features_bytes: list[int] = field(default_factory=list)


Extract = Callable[[Image.Image], copies.Features]


def featurize(
    stream: Iterator[Pair], embedder: Embedder | None, out: Measured, extract: Extract = copies.features
) -> list[Featured]:
    """Features (timed, into ``out``) and embeddings of every pair's sides; a shared side only once."""
    cache: dict[str, tuple[copies.Features, int]] = {}

    def side(img: Image.Image, key: str | None) -> tuple[copies.Features, int]:
        if key is not None and key in cache:
            return cache[key]
        t0 = time.perf_counter()
        feats = extract(img)
        out.features_ms.append(1000 * (time.perf_counter() - t0))
        out.features_bytes.append(len(feats.to_bytes()))
        result = (feats, embedder.add(img) if embedder is not None else -1)
        if key is not None:
            cache[key] = result
        return result

    featured = []
    for p in stream:
        (fa, va), (fb, vb) = side(p.a, p.a_key), side(p.b, None)
        featured.append(Featured(p.kind, p.detail, p.copy, p.hard, p.source, fa, fb, va, vb))
    if embedder is not None:
        embedder.flush()
    return featured


def score(
    featured: Sequence[Featured],
    embedder: Embedder | None,
    out: Measured,
    thresholds: copies.Thresholds = copies.DEFAULT,
) -> list[Scored]:
    """``verify`` (timed, into ``out``) and the cosine of every pair."""
    scored = []
    for p in featured:
        t0 = time.perf_counter()
        verdict = copies.verify(p.a, p.b, thresholds)
        out.verify_ms.append(1000 * (time.perf_counter() - t0))
        cosine = float("nan")
        if embedder is not None:
            cosine = float(np.dot(embedder.vectors[p.vec_a], embedder.vectors[p.vec_b]))
        scored.append(Scored(p, verdict, cosine))
    return scored


def measure(stream: Iterator[Pair], embedder: Embedder | None) -> Measured:
    """Features, embeddings and verdicts of every pair at the shipped thresholds."""
    out = Measured()
    out.scored = score(featurize(stream, embedder, out), embedder, out)
    return out


def confusion(truth: Sequence[bool], said: Sequence[bool]) -> dict[str, float | int]:
    """Precision, recall and F1 of ``said`` against ``truth``, with the counts."""
    tp = sum(t and s for t, s in zip(truth, said, strict=True))
    fp = sum(s and not t for t, s in zip(truth, said, strict=True))
    fn = sum(t and not s for t, s in zip(truth, said, strict=True))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def best_f1_threshold(truth: Sequence[bool], scores: Sequence[float]) -> float:
    """The score threshold (predict ``score >= t``) of best F1; the highest such threshold on ties."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    positives = sum(truth)
    best, best_t, tp, fp = -1.0, math.inf, 0, 0
    for rank, i in enumerate(order):
        tp += truth[i]
        fp += not truth[i]
        if rank + 1 < len(order) and scores[order[rank + 1]] == scores[i]:
            continue  # a threshold cannot split equal scores
        f1 = 2 * tp / (tp + fp + positives) if positives else 0.0
        if f1 > best:
            best, best_t = f1, scores[i]
    return best_t


Decide = Callable[[Scored], bool]


def tier_figures(scored: Sequence[Scored], decide: Decide) -> dict[str, Any]:
    """One tier's figures over all pairs, over copies and hard negatives only, and without ``same_scene``."""
    truth = [s.copy for s in scored]
    said = [decide(s) for s in scored]
    hard = [i for i, s in enumerate(scored) if s.copy or s.hard]
    plain = [i for i, s in enumerate(scored) if s.kind != "same_scene"]
    hard_negatives = [i for i in hard if not scored[i].copy]
    return {
        "all": confusion(truth, said),
        "copies_vs_hard_negatives": confusion([truth[i] for i in hard], [said[i] for i in hard]),
        "without_same_scene": confusion([truth[i] for i in plain], [said[i] for i in plain]),
        "hard_negative_false_positive_rate": round(
            sum(said[i] for i in hard_negatives) / max(1, len(hard_negatives)), 4
        ),
    }


def kind_figures(scored: Sequence[Scored], deciders: dict[str, Decide]) -> dict[str, Any]:
    """Per kind: how many pairs, and the share each tier calls copies (recall for copies, FP rate else)."""
    out: dict[str, Any] = {}
    for kind in sorted({s.kind for s in scored}):
        group = [s for s in scored if s.kind == kind]
        row: dict[str, Any] = {"n": len(group), "copy": group[0].copy, "hard": group[0].hard}
        for name, decide in deciders.items():
            row[f"{name}_says_copy"] = round(sum(map(decide, group)) / len(group), 4)
        cos = [s.cosine for s in group if not math.isnan(s.cosine)]
        if cos:
            row["cosine_min_median_max"] = [
                round(min(cos), 3),
                round(statistics.median(cos), 3),
                round(max(cos), 3),
            ]
        inl = [s.verdict.inliers for s in group]
        row["inliers_min_median_max"] = [min(inl), statistics.median(inl), max(inl)]
        out[kind] = row
    return out


def mistakes(scored: Sequence[Scored], decide: Decide, limit: int = 25) -> list[dict[str, Any]]:
    """The pairs a tier gets wrong (up to ``limit``), to read what fails."""
    wrong = [s for s in scored if decide(s) != s.copy]
    return [
        {
            "kind": s.kind,
            "source": s.pair.source,
            "detail": s.pair.detail,
            "inliers": s.verdict.inliers,
            "coverage": round(s.verdict.coverage, 3),
            "inlier_ratio": round(s.verdict.inlier_ratio, 3),
            "mirrored": s.verdict.mirrored,
            "agreement": None if s.verdict.agreement is None else round(s.verdict.agreement, 3),
            "cosine": round(s.cosine, 4),
        }
        for s in wrong[:limit]
    ]


def split_figures(m: Measured, with_cosine: bool) -> dict[str, Any]:
    """Every figure of one split (see the module docstring)."""
    scored = m.scored
    truth = [s.copy for s in scored]
    by_kind = Counter(s.kind for s in scored)
    out: dict[str, Any] = {
        "pairs": {
            "copies": sum(truth),
            "hard_negatives": sum(s.hard and not s.copy for s in scored),
            "easy_negatives": sum(not s.hard and not s.copy for s in scored),
            "by_kind": dict(sorted(by_kind.items())),
        },
    }
    deciders: dict[str, Decide] = {"verify": lambda s: s.verdict.is_copy}
    if with_cosine:
        deployed = MeshConfig().near_duplicate_threshold
        best = best_f1_threshold(truth, [s.cosine for s in scored])
        deciders = {
            "copy_tier": lambda s: s.cosine >= deployed and s.verdict.is_copy,
            "verify": deciders["verify"],
            "cosine_deployed": lambda s: s.cosine >= deployed,
            "cosine_best": lambda s: s.cosine >= best,
        }
        lost = sum(s.copy and s.cosine < deployed for s in scored)
        out["cosine_thresholds"] = {"deployed": deployed, "best_f1_on_this_set": round(best, 4)}
        out["candidate_stage"] = {
            "copies_below_deployed_cosine": lost,
            "share_of_copies": round(lost / max(1, sum(truth)), 4),
        }
    out["tiers"] = {name: tier_figures(scored, decide) for name, decide in deciders.items()}
    out["by_kind"] = kind_figures(scored, deciders)
    out["mistakes"] = {
        name: mistakes(scored, deciders[name]) for name in ("copy_tier", "verify") if name in deciders
    }
    return out


def _ms(values: Sequence[float]) -> dict[str, float | int]:
    return {
        "p50": round(percentile(values, 50), 2),
        "p99": round(percentile(values, 99), 2),
        "n": len(values),
    }


def run(size: Size = "full", seed: int = 0) -> dict[str, Any]:
    """Build both splits' pairs, measure them at the shipped thresholds and return every figure."""
    t0 = time.perf_counter()
    parts = split(seed)
    names = {"tuning": parts.tuning, "evaluation": parts.evaluation}
    if size == "reduced":
        names = {k: reduced_names(v) for k, v in names.items()}
    embedder = Embedder()
    evaluation = measure(pairs(names["evaluation"], size, seed), embedder)
    # new pairs of the same evaluation photos (other crops, edits, parts): never looked at while tuning
    fresh = measure(pairs(names["evaluation"], size, seed + 1), embedder)
    tuning = measure(tuning_pairs(names["tuning"], size, seed), None)
    return {
        "size": size,
        "seed": seed,
        "sources": {k: list(v) for k, v in names.items()},
        "thresholds": {
            "long_side": copies.LONG_SIDE,
            "max_keypoints": copies.MAX_KEYPOINTS,
            "fast_threshold": copies.FAST_THRESHOLD,
            "max_scale": copies.MAX_SCALE,
            "pixel_side": copies.PIXEL_SIDE,
            "block": copies.BLOCK,
            "block_ncc": copies.BLOCK_NCC,
            **asdict(copies.DEFAULT),
        },
        "evaluation": split_figures(evaluation, with_cosine=True),
        "fresh_pairs": {"pairs_seed": seed + 1, **split_figures(fresh, with_cosine=True)},
        "tuning": split_figures(tuning, with_cosine=False),
        "timing_ms": {
            "features_per_image": _ms(evaluation.features_ms + tuning.features_ms),
            "verify_per_pair": _ms(evaluation.verify_ms + tuning.verify_ms),
        },
        "features_bytes": {
            "median": int(statistics.median(evaluation.features_bytes)),
            "max": max(evaluation.features_bytes),
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }


# --- tuning ----------------------------------------------------------------------------------------------


def tuning_pairs(names: Sequence[str], size: Size, seed: int) -> Iterator[Pair]:
    """The tuning split's pairs of sample photos, then its synthetic hard cases (``copy_synthetic``)."""
    yield from pairs(names, size, seed)
    yield from synthetic_pairs(names, COUNTS[size], seed)


RATIOS = (0.7, 0.75, 0.8, 0.85)
RANSAC_PXS = (3.0, 5.0, 8.0)
MIN_INLIERS = (6, 8, 10, 12, 15, 20, 25, 30)
MIN_COVERAGES = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
MIN_INLIER_RATIOS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6)
COPY_KEEPS = 0.5  # the definition: a crop that keeps at least half of the picture


def tune(seed: int = 0, size: Size = "full") -> dict[str, Any]:
    """Sweep the decision thresholds on the tuning split only and say which the plateau rule picks.

    For each (ratio, RANSAC tolerance) the pairs are verified once, and every (inliers, coverage, inlier
    ratio) threshold is applied to the recorded scores. The plateau: the settings with at most one mistake
    more than the best. Of those, coverage takes the largest value below one half (a copy may keep exactly
    half, the definition's bound, so the threshold sits one step under it to leave room for the estimate's
    error), and the other thresholds the setting nearest their medians (the middle of the plateau, not its
    edge, so that the choice does not hug the tuning set's hardest pair).
    """
    names = split(seed).tuning
    if size == "reduced":
        names = reduced_names(names)
    scratch = Measured()
    featured = featurize(pairs(names, size, seed), None, scratch)
    truth = [p.copy for p in featured]
    grid: list[tuple[copies.Thresholds, dict[str, float | int]]] = []
    for ratio in RATIOS:
        for ransac_px in RANSAC_PXS:
            loose = copies.Thresholds(ratio, ransac_px, min_inliers=0, min_coverage=0.0, min_inlier_ratio=0.0)
            scored = score(featured, None, scratch, loose)
            for t in _decision_grid(loose):
                said = [copies.decide(s.verdict, t) for s in scored]
                grid.append((t, confusion(truth, said)))
    fewest = min(_errors(c) for _, c in grid)
    plateau = [(t, c) for t, c in grid if _errors(c) <= fewest + 1]
    below = [t.min_coverage for t, _ in plateau if t.min_coverage < COPY_KEEPS]
    coverage = max(below) if below else min(t.min_coverage for t, _ in plateau)
    candidates = [(t, c) for t, c in plateau if t.min_coverage == coverage]
    chosen, figures = min(candidates, key=lambda tc: _distance_to_median(tc[0], [t for t, _ in candidates]))
    return {
        "sources": list(names),
        "pairs": len(featured),
        "copies": sum(truth),
        "fewest_mistakes": fewest,
        "plateau_size": len(plateau),
        "plateau_ranges": {
            k: [min(getattr(t, k) for t, _ in plateau), max(getattr(t, k) for t, _ in plateau)]
            for k in copies.Thresholds.__dataclass_fields__
        },
        "chosen": asdict(chosen),
        "chosen_figures": figures,
        "shipped": asdict(copies.DEFAULT),
    }


MIN_AGREEMENTS = tuple(round(0.8 + 0.01 * i, 2) for i in range(20))


def tune_agreement(seed: int = 0, size: Size = "full") -> dict[str, Any]:
    """Sweep the pixel check's threshold on the tuning split and its synthetic cases, the keypoint thresholds
    as shipped (:func:`tune` chose them on the photos' pairs, before the pixel check existed).

    The plateau: thresholds with at most one mistake more than the best; the chosen one is its median.
    """
    names = split(seed).tuning
    if size == "reduced":
        names = reduced_names(names)
    scratch = Measured()
    featured = featurize(tuning_pairs(names, size, seed), None, scratch)
    truth = [p.copy for p in featured]
    measured = score(featured, None, scratch, replace(copies.DEFAULT, min_agreement=0.0))
    grid = []
    for a in MIN_AGREEMENTS:
        t = replace(copies.DEFAULT, min_agreement=a)
        grid.append((a, confusion(truth, [copies.decide(s.verdict, t) for s in measured])))
    fewest = min(_errors(c) for _, c in grid)
    plateau = [a for a, c in grid if _errors(c) <= fewest + 1]
    chosen = plateau[(len(plateau) - 1) // 2]
    return {
        "sources": list(names),
        "pairs": len(featured),
        "by_kind": dict(sorted(Counter(p.kind for p in featured).items())),
        "grid": {str(a): c for a, c in grid},
        "fewest_mistakes": fewest,
        "plateau": plateau,
        "chosen": chosen,
        "shipped": copies.MIN_AGREEMENT,
    }


def _errors(c: dict[str, float | int]) -> int:
    return int(c["fp"]) + int(c["fn"])


def _decision_grid(base: copies.Thresholds) -> Iterator[copies.Thresholds]:
    for n in MIN_INLIERS:
        for c in MIN_COVERAGES:
            for r in MIN_INLIER_RATIOS:
                yield replace(base, min_inliers=n, min_coverage=c, min_inlier_ratio=r)


def _distance_to_median(t: copies.Thresholds, plateau: Sequence[copies.Thresholds]) -> float:
    """How far ``t`` is from the plateau's per-threshold medians, each in units of its range there."""
    total = 0.0
    for k in copies.Thresholds.__dataclass_fields__:
        values = [float(getattr(p, k)) for p in plateau]
        width = (max(values) - min(values)) or 1.0
        total += abs(float(getattr(t, k)) - statistics.median(values)) / width
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ops.bench.copies", description=__doc__.split("\n")[0])
    ap.add_argument("--reduced", action="store_true", help="a few sources, every kind of pair (CI)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tune", action="store_true", help="sweep the keypoint thresholds on the tuning split")
    ap.add_argument(
        "--tune-agreement", action="store_true", help="sweep the pixel check's threshold on the tuning split"
    )
    args = ap.parse_args(argv)
    size: Size = "reduced" if args.reduced else "full"
    if args.tune_agreement:
        result = tune_agreement(args.seed, size)
    else:
        result = tune(args.seed, size) if args.tune else run(size, args.seed)
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
