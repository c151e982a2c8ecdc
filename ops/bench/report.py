"""The outputs: ``var/bench/summary.json`` (the headline keys and every figure) and ``docs/BENCHMARKS.md``."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

from ops.bench.plan import Plan
from ops.bench.runner import STEPS, Results

# headline key -> (figure it is the median of, target, "ge" or "le")
HEADLINES: dict[str, tuple[str, float, str]] = {
    "ingest_ratio": ("ingest_ratio_clip", 0.8, "ge"),
    "ingest_ratio_default": ("ingest_ratio_default", 0.5, "ge"),
    "triton_ratio": ("triton_ratio_clip", 0.9, "ge"),
    "query_p50_overhead_ms": ("query_p50_overhead_ms_512_{n}", 2.0, "le"),
    "recall_at_10": ("recall_at_10_512_{n}", 0.95, "ge"),
    "upload_ratio": ("upload_ratio", 0.5, "ge"),
}


# What the figures led to: kept by hand (the figures quoted are from `make bench` runs on this 2-core machine)
CHANGES = """\
## What the figures led to

Each change below was made because a run showed the cost, and kept because the next run showed the gain
(quick plan, same machine; before -> after).

- **Queries read Redis directly.** `GET /images/{id}/similar` went gateway -> NATS -> indexer -> Redis; the hop
  cost more than the search (`query_nats_p50_ms_*`, still measured). The gateway now runs the same
  `VectorIndex` query itself (writes stay with the indexer), reads the image's state and vector in one
  pipelined round trip, runs FT.SEARCH through redis-py without redisvl's per-result reshaping, and no
  longer sends its dependency lookup through a worker thread. `query_p50_overhead_ms` at 10k: 5.9 -> 1.77,
  at 100k: 10.7 (a run beside CI) -> 1.86.
- **The bench waits for Redis to settle after a bulk insert.** At 100k vectors RediSearch's background scan
  (FT.INFO `indexing`) and the AOF rewrite / RDB save ran into the timed passes: p50 160 ms in one run.
- **S3 PUT and GET are signed by botocore and sent by aiohttp** instead of aioboto3's client pipeline (1.6 ->
  0.55 ms of CPU a call): gateway CPU per upload 7.1 -> 5.2 ms; `upload_ratio` 0.41 (a run beside CI) and
  0.44-0.52 (a quiet A/B) -> 0.65.
- **JPEG validation decodes at 1/8 scale** (every scan is still read): 3.6 -> 2.0 ms per 1024x768 upload.
- **ONNX Runtime threads in Triton do not spin** (`allow_spinning` 0): Triton over in-process ORT for
  EfficientNet went from 0.58-0.72 to 0.63-0.89 in an A/B of the two settings, Triton restarted between.
- **Tried and dropped: uvloop.** In one run, two gateways side by side (asyncio and uvloop) answered
  `/similar` in 4.64 and 4.54 ms p50: 2 %, not worth a second event loop implementation under every process.
"""


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
    for key, (fig, target, how) in HEADLINES.items():
        f = res.figures.get(fig.format(n=plan.query_main_n))
        if f is None:
            continue
        out[key] = round(f.median, 4)
        met[key] = f.median >= target if how == "ge" else f.median <= target
    extra = {
        "triton_ratio_default": "triton_ratio_default",
        "query_p99_overhead_ms": f"query_p99_overhead_ms_512_{plan.query_main_n}",
        "query_p50_overhead_ms_1280": f"query_p50_overhead_ms_1280_{plan.query_n_1280}",
        "recall_at_10_1280": f"recall_at_10_1280_{plan.query_n_1280}",
    }
    for key, fig in extra.items():
        if fig in res.figures:
            out[key] = round(res.figures[fig].median, 4)
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


def markdown(data: dict[str, Any], plan: Plan) -> str:
    m = data["machine"]
    d = data["details"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `python -m ops.bench` (`make bench`; `--full` for the issue's sizes, `--large` adds 1M",
        "vectors). Every figure is the median of the runs with min and max; every ratio is taken run by run",
        "against a baseline measured in the same run on the same machine, because absolute numbers on a",
        "shared 2-core machine move with whatever else runs. Raw data: `summary.json` in the work",
        "directory (`var/bench` unless `--work-dir`).",
        "",
        f"- machine: {m['cores']} cores, {m['cpu_model']}, Python {m['python']}",
        f"- date: {data['date']}; plan `{plan.name}` ({plan.reps} runs per figure); "
        f"took {data['total_seconds']:.0f} s"
        + (f"; only the steps {', '.join(data['steps'])}" if data.get("steps") else ""),
        *(
            [
                f"- ingest: {d['ingest_n_clip']} images (CLIP) and {d.get('ingest_n_default')} (EfficientNet) "
                f"of {plan.image_size[0]}x{plan.image_size[1]} (mean {d.get('camera_jpeg_kb_mean')} KB), "
                f"{plan.uploaders} concurrent uploaders"
                + ("; `--full` runs 500" if plan.name == "quick" else "")
            ]
            if "ingest_n_clip" in d
            else []
        ),
        f"- HNSW: {d.get('hnsw')}",
        "",
        "## Headline figures",
        "",
        "| key | value | target | met |",
        "| --- | --- | --- | --- |",
    ]
    for key, (_, target, how) in HEADLINES.items():
        if key in data:
            sign = ">=" if how == "ge" else "<="
            ok = "yes" if data["targets_met"].get(key) else "**no**"
            lines.append(f"| `{key}` | {_fmt(data[key])} | {sign} {target} | {ok} |")
    lines += [
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
    lines += ["", "## Where ingest time goes (coordinator `mesh_stage_seconds`, the median run)", ""]
    for key in ("stages_clip", "stages_default", "stages_default_2coord"):
        st = d.get(key)
        if not st:
            continue
        lines += [f"`{key}`:", "", "| stage | images | total s | mean ms |", "| --- | --- | --- | --- |"]
        for stage, v in st.items():
            if isinstance(v, dict):
                lines.append(f"| {stage} | {v['count']:.0f} | {v['seconds']} | {v['mean_ms']} |")
        lines += [f"\nwall {st.get('_wall_s', 0):.1f} s, of which uploading {st.get('_upload_s', 0):.1f} s\n"]
    prof = d.get("profile_clip_ingest")
    if prof:
        lines += ["## py-spy during a CLIP ingest run (CPU samples)", ""]
        for proc in ("coordinator", "gateway"):
            p = prof.get(proc)
            if not p:
                continue
            lines += [
                f"`{proc}`: {p['seconds_on_cpu']} s on CPU",
                "",
                "| leaf function | % |",
                "| --- | --- |",
            ]
            lines += [f"| `{k}` | {v} |" for k, v in p["top_leaf_pct"].items()]
            lines += ["", "| project frame (inclusive) | % |", "| --- | --- |"]
            lines += [f"| `{k}` | {v} |" for k, v in p["project_frames_inclusive_pct"].items()]
            lines.append("")
    lines += [
        CHANGES,
        "## Other details",
        "",
        "```json",
        json.dumps({k: v for k, v in d.items() if not k.startswith(("stages_", "profile_"))}, indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)
