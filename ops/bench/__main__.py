"""``python -m ops.bench [--full] [--large]``: start a private mesh, run every benchmark, write the reports.

Writes ``var/bench/summary.json`` and ``docs/BENCHMARKS.md`` at the end of the run, whole. The stack runs on
free ports with its data in ``var/bench/stack`` (wiped at start); the model repository (EfficientNet-Lite0 and a
random ViT-B/32-sized CLIP) is exported once into ``var/bench/model_repository`` and reused, and the realistic
query vectors are cached in ``var/bench/vectors`` (the first run embeds them: about 15-20 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from pathlib import Path

from ops.bench.plan import FULL, LARGE, QUICK
from ops.bench.runner import STEPS
from ops.stack.services import ROOT


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ops.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="the issue's sizes (500 images per ingest run)")
    ap.add_argument(
        "--large",
        action="store_true",
        help="--full with 1M realistic vectors (the first run embeds them: hours)",
    )
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy pass")
    ap.add_argument(
        "--only",
        type=lambda v: set(v.split(",")),
        default=None,
        metavar="STEP[,STEP]",
        help=f"run only these steps, of: {','.join(STEPS)}",
    )
    ap.add_argument("--work-dir", type=Path, default=ROOT / "var" / "bench")
    ap.add_argument("--report", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.only and args.only - set(STEPS):
        ap.error(f"unknown step(s) {sorted(args.only - set(STEPS))}; the steps are {','.join(STEPS)}")
    plan = LARGE if args.large else FULL if args.full else QUICK
    if args.no_profile:
        from dataclasses import replace

        plan = replace(plan, profile=False)

    from ops.bench.report import markdown, summary
    from ops.bench.runner import Runner
    from ops.bench.stack import BenchStack
    from ops.models.repository import random_clip

    work = args.work_dir.resolve()
    started = dt.datetime.now().astimezone()
    t0 = time.perf_counter()
    checkpoint = random_clip(ROOT / "var" / "models", "vit-b32")
    repository = work / "model_repository"
    print(f"[bench] starting the stack in {work / 'stack'} (models in {repository})", flush=True)
    bench = BenchStack.start(
        work / "stack",
        models="efficientnet_lite0,clip",
        clip_checkpoint=str(checkpoint),
        model_repository=repository,
    )
    try:
        res = asyncio.run(Runner(plan, bench, repository, work, only=args.only).run())
    finally:
        bench.close()
    data = summary(res, plan, started, time.perf_counter() - t0)
    (work / "summary.json").write_text(json.dumps(data, indent=2) + "\n")
    args.report.write_text(markdown(data, plan))
    print(json.dumps({k: v for k, v in data.items() if k not in ("figures", "details")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
