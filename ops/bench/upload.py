"""Upload throughput: POST /images/upload against the bare endpoint of ``ops.bench.bare``, same client."""

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

from ops.bench.data import tagged
from ops.stack.ports import free_port
from ops.stack.services import ROOT


@contextmanager
def bare_server(timeout_s: float = 60) -> Iterator[str]:
    """The bare endpoint in its own uvicorn process; yields its base URL."""
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
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


async def upload_rate(
    base_url: str, path: str, images: list[bytes], tag: str, concurrency: int = 16
) -> float:
    """Uploads/s of ``images`` (re-tagged: new bytes every run) with ``concurrency`` clients."""
    data = [tagged(d, f"{tag}-{i}") for i, d in enumerate(images)]
    nxt = iter(data)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        warm = await client.post(path, files={"file": ("w.jpg", tagged(images[0], tag + "-w"), "image/jpeg")})
        warm.raise_for_status()

        async def worker() -> None:
            for body in nxt:
                r = await client.post(path, files={"file": ("image.jpg", body, "image/jpeg")})
                if r.status_code not in (200, 202):
                    raise RuntimeError(f"upload to {path} failed: HTTP {r.status_code} {r.text[:200]}")

        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())
        return len(data) / (time.perf_counter() - start)
