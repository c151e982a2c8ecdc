"""``ops/bench/cpu.py``: a process's CPU seconds from /proc, its live descendants counted (how the upload
benchmark says where the mesh's CPU goes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from ops.bench.cpu import cpu_seconds, spent

BUSY = (
    "import time; t = time.process_time(); exec('while time.process_time() - t < 0.4: pass'); time.sleep(30)"
)


def test_a_busy_process_is_counted() -> None:
    before = cpu_seconds({"me": os.getpid()})
    t = time.process_time()
    while time.process_time() - t < 0.3:
        pass
    assert spent(before, cpu_seconds({"me": os.getpid()}))["me"] >= 0.2


def test_a_parent_is_counted_with_its_busy_child() -> None:
    """A shell that only waits, whose child burns 0.4 s: the shell's figure holds the child's CPU."""
    parent = subprocess.Popen(["/bin/sh", "-c", f'"{sys.executable}" -c "{BUSY}"; :'])
    try:
        deadline = time.monotonic() + 20
        while cpu_seconds({"sh": parent.pid})["sh"] < 0.3:
            assert time.monotonic() < deadline, "the child's CPU never showed in its parent's figure"
            time.sleep(0.1)
    finally:
        subprocess.run(["pkill", "-P", str(parent.pid)], check=False)
        parent.kill()
        parent.wait()
