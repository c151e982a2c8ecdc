"""CPU seconds of processes from ``/proc`` (Linux): a process with its live descendants (Triton's Python-backend
stubs, uvicorn's workers), for saying where a benchmark's CPU went."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, or not Linux
        return None
    return text[text.rindex(")") + 2 :].split()  # the fields after "pid (comm) "


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            out.setdefault(int(fields[1]), []).append(int(entry.name))  # field 4: ppid
    return out


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """Each named process's user + system CPU seconds so far, its live descendants included."""
    kids = _children()
    out = {}
    for name, pid in pids.items():
        total, todo = 0.0, [pid]
        while todo:
            p = todo.pop()
            if fields := _stat(p):
                total += (int(fields[11]) + int(fields[12])) / TICK  # fields 14, 15: utime, stime
            todo += kids.get(p, [])
        out[name] = total
    return out


def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}
