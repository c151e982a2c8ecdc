"""Upload throughput: POST /images/upload against the bare endpoint of ``ops.bench.bare``, same client.

The mesh runs as deployed: at the default log level, with the coordinator embedding each upload as it arrives;
``wait_processed`` lets that backlog drain before the next baseline pass.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import redis.asyncio as aioredis

from ops.bench.data import tagged
from ops.bench.ingest import copy_checks_drained, wait_done
from ops.bench.stack import BenchStack
from ops.stack.ports import free_port
from ops.stack.services import ROOT


@contextmanager
def bare_server(timeout_s: float = 60) -> Iterator[tuple[str, int]]:
    """The bare endpoint in its own uvicorn process; yields its base URL and its pid."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.bench.bare", str(port)], cwd=ROOT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bare upload endpoint did not start")
            time.sleep(0.3)
        yield url, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


async def upload_rate(
    base_url: str, path: str, images: list[bytes], tag: str, concurrency: int = 16
) -> tuple[float, list[str]]:
    """Uploads/s of ``images`` (re-tagged: new bytes every run) with ``concurrency`` clients, and the image
    ids the endpoint answered (the mesh's; the bare endpoint answers none)."""
    data = [tagged(d, f"{tag}-{i}") for i, d in enumerate(images)]
    nxt = iter(data)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        warm = await client.post(path, files={"file": ("w.jpg", tagged(images[0], tag + "-w"), "image/jpeg")})
        warm.raise_for_status()

        ids: list[str] = [] if "image_id" not in warm.json() else [warm.json()["image_id"]]

        async def worker() -> None:
            for body in nxt:
                r = await client.post(path, files={"file": ("image.jpg", body, "image/jpeg")})
                if r.status_code not in (200, 202):
                    raise RuntimeError(f"upload to {path} failed: HTTP {r.status_code} {r.text[:200]}")
                if "image_id" in (answer := r.json()):
                    ids.append(answer["image_id"])

        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())
        return len(data) / (time.perf_counter() - start), ids


async def wait_processed(bench: BenchStack, ids: list[str], timeout_s: float = 900) -> None:
    """Wait until the coordinator has finished every one of these uploads (``done`` or ``error``) and the copy
    checker has checked them (so that neither runs into the next baseline pass)."""
    r = aioredis.Redis.from_url(bench.settings.redis_server_url)
    try:
        errors = await wait_done(r, bench.settings.redis_prefix, ids, timeout_s)
        await copy_checks_drained(r, bench.settings.redis_prefix, timeout_s)
    finally:
        await r.aclose()
    if errors:
        raise RuntimeError(f"{errors} uploads ended in error")
