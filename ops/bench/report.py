"""The outputs: ``var/bench/summary.json`` (the headline keys and every figure) and ``docs/BENCHMARKS.md``.

Everything in the report comes from the run that writes it (``make bench`` rewrites it whole): the figures,
the conditions each was measured under (``ops.bench.conditions``) and the stage times and profiles. Nothing
is typed in by hand; what earlier runs showed lives in git history, not in the generator.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ops.bench.conditions import conditions
from ops.bench.plan import Plan
from ops.bench.runner import STEPS
from ops.bench.stats import Figure, Results

Pick = Callable[[dict[str, Figure]], float | None]


def _median(name: str) -> Pick:
    return lambda figs: figs[name].median if name in figs else None


def _lowest(*names: str) -> Pick:
    def pick(figs: dict[str, Figure]) -> float | None:
        values = [figs[n].median for n in names if n in figs]
        return min(values) if len(values) == len(names) else None

    return pick


# headline key -> (how it is read off the figures, target of issue #11 or None, "ge" or "le")
HEADLINES: dict[str, tuple[Pick, float | None, str]] = {
    "ingest_ratio": (_median("ingest_ratio_clip"), 0.85, "ge"),
    "ingest_ratio_default": (_median("ingest_ratio_default"), 0.6, "ge"),
    "ingest_ratio_temporal": (_median("ingest_ratio_temporal"), None, "ge"),  # issue #16: beside JetStream's
    "triton_ratio": (_lowest("triton_ratio_clip", "triton_ratio_default"), 0.85, "ge"),
    "triton_ratio_clip": (_median("triton_ratio_clip"), 0.85, "ge"),
    "triton_ratio_default": (_median("triton_ratio_default"), 0.85, "ge"),
    "recall_at_10": (_median("recall_at_10"), 0.95, "ge"),
    "query_p50_overhead_ms": (_median("query_p50_overhead_ms"), None, "le"),
    "query_p99_overhead_ms": (_median("query_p99_overhead_ms"), 3.0, "le"),
    "query_p50_ratio": (_median("query_p50_ratio"), 1.6, "le"),
    "upload_ratio": (_median("upload_ratio"), 0.7, "ge"),
}


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu_model": model, "python": platform.python_version()}


def summary(res: Results, plan: Plan, started: dt.datetime, total_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    met: dict[str, bool] = {}
    for key, (pick, target, how) in HEADLINES.items():
        value = pick(res.figures)
        if value is None:
            continue
        out[key] = round(value, 4)
        if target is not None:
            met[key] = value >= target if how == "ge" else value <= target
    ef = res.details.get("ef_runtime")
    if ef:
        out["ef_runtime_shipped"] = ef["chosen"]
    real = res.details.get("realistic")
    if real:
        out["recall_at_10_conditions"] = (
            f"{real['index_vectors']} vectors of {real['dim']} dimensions ({real['model']} embeddings of "
            f"composites of scikit-image's photos), {real['evaluation_queries']} held-out queries, "
            f"EF_RUNTIME {ef['chosen'] if ef else '?'}, through GET /images/{{id}}/similar"
        )
    out["targets_met"] = met
    out["plan"] = plan.name
    out["date"] = started.isoformat(timespec="seconds")
    out["machine"] = machine()
    out["total_seconds"] = round(total_s, 1)
    out["step_seconds"] = res.seconds
    out["steps"] = list(res.seconds) if len(res.seconds) < len(STEPS) else None
    out["figures"] = {k: v.as_dict() for k, v in res.figures.items()}
    out["details"] = res.details
    return out


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def _headlines(data: dict[str, Any]) -> list[str]:
    lines = ["| key | value | target (issue #11) | met |", "| --- | --- | --- | --- |"]
    for key, (_, target, how) in HEADLINES.items():
        if key not in data:
            continue
        if target is None:
            lines.append(f"| `{key}` | {_fmt(data[key])} | - | - |")
            continue
        ok = "yes" if data["targets_met"].get(key) else "**no**"
        lines.append(f"| `{key}` | {_fmt(data[key])} | {'>=' if how == 'ge' else '<='} {target} | {ok} |")
    return lines


def _stages(d: dict[str, Any]) -> list[str]:
    lines = ["## Where ingest time goes (coordinator `mesh_stage_seconds`, the median run)", ""]
    for key in ("stages_clip", "stages_default", "stages_default_2coord"):
        st = d.get(key)
        if not st:
            continue
        lines += [f"`{key}`:", "", "| stage | images | total s | mean ms |", "| --- | --- | --- | --- |"]
        for stage, v in st.items():
            if isinstance(v, dict):
                lines.append(f"| {stage} | {v['count']:.0f} | {v['seconds']} | {v['mean_ms']} |")
        if "_wall_s" in st:
            lines += [f"\nwall {st['_wall_s']:.1f} s, of which uploading {st.get('_upload_s', 0):.1f} s"]
        lines.append("")
    return lines


def _labels(d: dict[str, Any]) -> list[str]:
    lab = d.get("labels")
    if not lab:
        return []
    lines = [
        "## Label search (`GET /search?q=WORD`, labels mode, default model)",
        "",
        f"{lab['photos_with_known_class']} scikit-image photos whose ImageNet class is known, "
        f"{lab['copies_per_photo']} altered copies each (`ops/bench/labels.py` VARIANTS), among "
        f"{lab['distractor_images']} distractor images ({lab['images']} in all, {lab['errors']} errors); "
        "each word is the photo's class name (not held out: see `KNOWN`'s comment). Micro-averaged over the "
        f"words: precision **{lab['precision']:.3f}**, recall **{lab['recall']:.3f}**, R-precision "
        f"{lab['r_precision']:.3f}. Labels step: {lab['labels_step_ms_per_image']} ms per image "
        f'(coordinator `mesh_stage_seconds{{stage="labels"}}`); the classifier head makes one inference '
        f"{lab['classifier_head_inference_ratio']:.3f}x the embedding alone (ONNX Runtime, batch 32).",
        "",
        "| word | photo | relevant | returned | found | precision | recall | R-precision | missed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for word, w in lab["per_word"].items():
        missed = ", ".join(w["missed_variants"]) or "-"
        lines.append(
            f"| {word} | {w['photo']} | {w['relevant']} | {w['returned']} | {w['found']} | {w['precision']} "
            f"| {w['recall']} | {w['r_precision']} | {missed} |"
        )
    return [*lines, ""]


def _copies(d: dict[str, Any]) -> list[str]:
    c = d.get("copies")
    if not c:
        return []
    e = c["evaluation"]
    pairs = e["pairs"]
    lines = [
        "## Copies apart from look-alikes (`GET /duplicates`, `ops/bench/copies.py`)",
        "",
        f"Evaluation split ({c['size']}, seed {c['seed']}; source photos {', '.join(c['sources']['evaluation'])}; "
        f"tuned on {', '.join(c['sources']['tuning'])} only): {pairs['copies']} copy pairs, "
        f"{pairs['hard_negatives']} hard negatives, {pairs['easy_negatives']} easy negatives. Targets of the copy "
        "tier: precision >= 0.95, recall >= 0.9. The cosine alone at its best threshold is chosen on the "
        f"evaluation set itself ({e['cosine_thresholds']['best_f1_on_this_set']}), which flatters it.",
        "",
        "The pixel check (`actors/copies.py` step 4, orb-2) came after the first evaluation of the keypoint check "
        "alone (orb-1: copy tier precision 0.948, recall 0.951; its false positives were the stereo pair's views "
        "and parts of the brick and grass textures). Its threshold was chosen on the tuning split plus synthetic "
        "cases of those kinds made from tuning photos only (`ops/bench/copy_synthetic.py`, `python -m "
        "ops.bench.copies --tune-agreement`); no evaluation pair was used to choose it, but which kinds of case "
        "to synthesize was learnt from the evaluation's mistakes.",
        "",
        "| tier | precision | recall | false positives | missed copies |",
        "| --- | --- | --- | --- | --- |",
    ]
    names = {
        "copy_tier": "copy tier (cosine >= candidate cut, then verified)",
        "verify": "verification alone",
        "cosine_deployed": f"cosine alone at {e['cosine_thresholds']['deployed']}",
        "cosine_best": "cosine alone at its best threshold",
    }
    for key, label in names.items():
        t = e["tiers"][key]["all"]
        lines.append(f"| {label} | {t['precision']:.3f} | {t['recall']:.3f} | {t['fp']} | {t['fn']} |")
    fresh = c.get("fresh_pairs")
    if fresh:
        f = fresh["tiers"]["copy_tier"]["all"]
        v = fresh["tiers"]["verify"]["all"]
        lines += [
            "",
            f"Fresh pairs of the same evaluation photos (pair seed {fresh['pairs_seed']}: other crops, edits and "
            f"parts, never looked at while tuning): copy tier precision {f['precision']:.3f}, recall "
            f"{f['recall']:.3f} ({f['fp']} false positives, {f['fn']} missed); verification alone precision "
            f"{v['precision']:.3f}, recall {v['recall']:.3f}.",
        ]
    lines += [
        "",
        "| pair kind | pairs | copy tier says copy | cosine at the cut says copy |",
        "| --- | --- | --- | --- |",
    ]
    for kind, k in e["by_kind"].items():
        lines.append(
            f"| {kind} | {k['n']} | {k['copy_tier_says_copy']:.2f} | {k['cosine_deployed_says_copy']:.2f} |"
        )
    t = c["timing_ms"]
    mesh = d.get("copy_check_mesh") or {}
    lines += [
        "",
        f"Cost in-process: features {t['features_per_image']['p50']} ms p50, {t['features_per_image']['p99']} ms "
        f"p99 per image (made by the pipeline from its decode); verification {t['verify_per_pair']['p50']} ms p50, "
        f"{t['verify_per_pair']['p99']} ms p99 per candidate pair; features {c['features_bytes']['median']} bytes "
        "per image (median).",
    ]
    if mesh:
        img, pair = mesh.get("per_image_ms", {}), mesh.get("per_pair_ms", {})
        lines.append(
            f"In the mesh (the background checker over every image this run ingested): {img.get('n')} images, "
            f"{img.get('p50')} ms p50 / {img.get('p99')} ms p99 each; {pair.get('n')} pairs, {pair.get('p50')} ms "
            f"p50 / {pair.get('p99')} ms p99 each (from the histogram buckets); verdicts {mesh.get('pairs')}; "
            f"queue left {mesh.get('queue')}."
        )
    return [*lines, ""]


def _profile(d: dict[str, Any]) -> list[str]:
    prof = d.get("profile_clip_ingest")
    if not prof:
        return []
    lines = ["## py-spy during a CLIP ingest run (CPU samples)", ""]
    for proc in ("coordinator", "gateway"):
        p = prof.get(proc)
        if not p:
            continue
        lines += [f"`{proc}`: {p['seconds_on_cpu']} s on CPU", "", "| leaf function | % |", "| --- | --- |"]
        lines += [f"| `{k}` | {v} |" for k, v in p["top_leaf_pct"].items()]
        lines += ["", "| project frame (inclusive) | % |", "| --- | --- |"]
        lines += [f"| `{k}` | {v} |" for k, v in p["project_frames_inclusive_pct"].items()]
        lines.append("")
    return lines


def markdown(data: dict[str, Any], plan: Plan) -> str:
    m = data["machine"]
    d = data["details"]
    steps = data.get("steps")
    lines = [
        "# Benchmarks",
        "",
        "Written whole by `python -m ops.bench` (`make bench`) at the end of its run: this is the last run, every",
        "figure and condition below is that run's. Every figure is the median of the runs with min and max;",
        "every ratio is taken run by run against a baseline measured in the same run on the same machine,",
        "because absolute numbers on a shared machine move with whatever else runs. Raw data: `summary.json`",
        "in the work directory (`var/bench` unless `--work-dir`).",
        "",
        f"- machine: {m['cores']} cores, {m['cpu_model']}, Python {m['python']}",
        f"- date: {data['date']}; plan `{plan.name}` ({plan.reps} runs per figure); took "
        f"{data['total_seconds']:.0f} s (per step: {data['step_seconds']})"
        + (f"; only the steps {', '.join(steps)}" if steps else ""),
        "",
        "## Headline figures",
        "",
        *_headlines(data),
        "",
        "## Conditions",
        "",
        *conditions(data, plan),
        "",
        "## Every figure",
        "",
        "| figure | median | min | max | unit |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, f in data["figures"].items():
        lines.append(
            f"| `{name}` | {_fmt(f['median'])} | {_fmt(f['min'])} | {_fmt(f['max'])} | {f['unit']} |"
        )
    lines += ["", *_stages(d), *_labels(d), *_copies(d), *_profile(d)]
    lines += [
        "## Other details",
        "",
        "```json",
        json.dumps(
            {k: v for k, v in d.items() if not k.startswith(("stages_", "profile_")) and k != "labels"},
            indent=1,
        ),
        "```",
        "",
    ]
    return "\n".join(lines)
