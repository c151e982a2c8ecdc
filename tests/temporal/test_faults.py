"""Faults under Temporal: kill -9 the worker twice during an ingest, and kill -9 Temporal's server once.

Each kill waits until the worker holds jobs (its ``mesh_jobs_in_flight`` gauge), so it hits work in flight.
Uploaders behave like well-behaved clients (they retry a 503 and a dropped connection). Afterwards every
accepted image is ``done`` with one ``done`` entry, and ``mesh check`` finds nothing; the figures (recovery
time, uploads refused meanwhile) are printed for docs/RELIABILITY.md. ``make test`` runs both at a reduced
size (30 images), ``make chaos`` at the issue's (120).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from ops.stack.supervisor import Stack, settings_env
from tests.chaos.conftest import pid_of, size, wait_restarted
from tests.helpers import upload_with_retry, wait_status, wait_until
from tests.images import distinct_jpegs

N = size(120, 30)


def holding(stack: Stack) -> bool:
    """Whether the worker holds jobs now (its in-flight gauge)."""
    s = stack.settings
    try:
        text = httpx.get(f"http://{s.host}:{s.coordinator_http_port}/metrics", timeout=2).text
    except httpx.HTTPError:  # restarting: not listening yet
        return False
    return any(
        line.startswith("mesh_jobs_in_flight ") and float(line.split()[1]) > 0 for line in text.splitlines()
    )


async def kill_when_holding(stack: Stack, name: str) -> float:
    """kill -9 ``name`` once the worker holds jobs; returns when supervisord's new process is healthy, and
    how long that took."""
    await wait_until("the worker holding jobs", lambda: holding(stack), 180, every_s=0.02)
    pid = pid_of(stack, name)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    await wait_restarted(stack, name, pid, timeout_s=180)
    return time.monotonic() - killed


async def ingest_through(
    client: httpx.AsyncClient, mesh: Stack, seed: int, fault: Callable[[], Awaitable[list[float]]]
) -> dict[str, object]:
    """Upload N images 8 at a time while ``fault`` runs; every accepted one must end ``done`` exactly once."""
    gate = asyncio.Semaphore(8)

    async def one(data: bytes) -> tuple[str, list[int]]:
        async with gate:
            return await upload_with_retry(client, data, deadline_s=300)

    started = time.monotonic()
    uploads = asyncio.gather(*(one(d) for d in distinct_jpegs(N, seed=seed)))
    restarts = await fault()
    results = await uploads
    ids = [image_id for image_id, _ in results]
    records = await wait_status(client, ids, {"done"}, timeout_s=600, through_outages=True)
    for image_id, rec in records.items():
        states = [h["status"] for h in rec["history"] if "status" in h]
        assert states.count("done") == 1, (image_id, states)
    env = {**os.environ, **settings_env(mesh.settings)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", "check", "--json", env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and json.loads(out)["ok"] is True, out.decode()
    figures = {
        "images": N,
        "restart_s": [round(r, 1) for r in restarts],
        "refused_503": sum(s.count(503) for _, s in results),
        "dropped_connections": sum(s.count(0) for _, s in results),
        "all_done_s": round(time.monotonic() - started, 1),
    }
    print(f"temporal fault figures: {figures}")
    return figures


@pytest.mark.timeout(900)
async def test_kill_the_worker_twice_during_ingest(client: httpx.AsyncClient, mesh: Stack) -> None:
    async def fault() -> list[float]:
        return [await kill_when_holding(mesh, "worker") for _ in range(2)]

    await ingest_through(client, mesh, 16_301, fault)


@pytest.mark.timeout(900)
async def test_kill_the_temporal_server_during_ingest(client: httpx.AsyncClient, mesh: Stack) -> None:
    async def fault() -> list[float]:
        return [await kill_when_holding(mesh, "temporal")]

    await ingest_through(client, mesh, 16_302, fault)
