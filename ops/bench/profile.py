"""py-spy profiles of mesh processes during a benchmark run, summarized as where the CPU time goes.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``); idle threads are left out,
so the counts are CPU samples. The summary gives each process's busiest leaf functions and the project's own
frames (``actors/``, ``gateway/``) by inclusive samples.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

RATE_HZ = 67


class Profiler:
    """``with Profiler({"coordinator": pid}, out_dir) as p: ...`` then ``p.summary()``."""

    def __init__(self, targets: dict[str, int], out_dir: Path) -> None:
        self.targets = targets
        self.out_dir = out_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.files: dict[str, Path] = {}
        self.error: str | None = None

    def __enter__(self) -> Profiler:
        # the venv's bin is not on PATH when the bench runs as .venv/bin/python -m ops.bench
        exe = shutil.which(
            "py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        )
        if exe is None:
            self.error = "py-spy not installed"
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.targets.items():
            out = self.out_dir / f"{name}.collapsed.txt"
            self.files[name] = out
            self.procs[name] = subprocess.Popen(
                [
                    exe,
                    "record",
                    "-p",
                    str(pid),
                    "-r",
                    str(RATE_HZ),
                    "--nonblocking",
                    "-f",
                    "raw",
                    "-o",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for name, proc in self.procs.items():
            proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if not self.files[name].exists():
                self.error = f"py-spy {name}: {err.decode(errors='replace')[-300:]}"

    def summary(self, top: int = 10) -> dict[str, Any]:
        out: dict[str, Any] = {"files": {n: str(f) for n, f in self.files.items()}}
        if self.error:
            out["error"] = self.error
        for name, path in self.files.items():
            if path.exists():
                out[name] = summarize(path.read_text(), top)
        return out


def _short(frame: str) -> str:
    # "fn (path/to/file.py:123)" -> "fn (file.py)"
    fn, _, where = frame.partition(" (")
    file = where.split(":")[0].rstrip(")")
    return f"{fn} ({'/'.join(Path(file).parts[-2:])})"


def summarize(collapsed: str, top: int = 10) -> dict[str, Any]:
    leaf: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf[_short(frames[-1])] += n
        seen = set()
        for f in frames:
            if any(m in f for m in ("(actors/", "/actors/", "(gateway/", "/gateway/")) and f not in seen:
                seen.add(f)
                own[_short(f)] += n
    pct = lambda c: round(100 * c / total, 1) if total else 0.0  # noqa: E731
    return {
        "cpu_samples": total,
        "seconds_on_cpu": round(total / RATE_HZ, 1),
        "top_leaf_pct": {k: pct(v) for k, v in leaf.most_common(top)},
        "project_frames_inclusive_pct": {k: pct(v) for k, v in own.most_common(top)},
    }
