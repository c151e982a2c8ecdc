"""What `sync_interval: always` costs: acknowledged JetStream publishes (the upload path's durable job) per
second with fsync on every write, against NATS's default (fsync every 2 minutes), measured in the same run.

The figures go to docs/RELIABILITY.md. The test asserts what must hold either way (every publish acknowledged
and stored), never a speed.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import httpx
import nats
import pytest

from ops.stack.services import ROOT, VENV_BIN
from tests.chaos.conftest import size
from tests.conftest import free_port

JOB = b'{"image_id":"x","object_key":"images/xx/x","sha256":"0"}'


def start_nats(tmp: Path, sync_always: bool) -> tuple[subprocess.Popen[bytes], int]:
    conf = (ROOT / "nats.conf").read_text()
    if not sync_always:
        conf = conf.replace("sync_interval: always", "")
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"nats-{sync_always}.conf"
    path.write_text(conf)
    port, mon = free_port(), free_port()
    env = {
        f"MESH_NATS_PASSWORD_{u.upper()}": "pw"
        for u in ("gateway", "coordinator", "config", "indexer", "ops")
    }
    proc = subprocess.Popen(
        [
            *(str(VENV_BIN / "nats-server"), "-c", str(path), "-a", "127.0.0.1"),
            *("-p", str(port), "-m", str(mon), "-sd", str(tmp / f"js-{sync_always}")),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{mon}/healthz?js-enabled-only=true").status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "nats-server did not start"
        time.sleep(0.2)


async def acked_publishes_per_s(port: int, n: int, concurrency: int = 16) -> float:
    nc = await nats.connect(f"nats://127.0.0.1:{port}", user="ops", password="pw")
    try:
        js = nc.jetstream()
        await js.add_stream(name="IMAGES", subjects=["images.jobs.>"])
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await js.publish("images.jobs.process", JOB, headers={"Nats-Msg-Id": str(i)})

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        rate = n / (time.perf_counter() - start)
        assert (await js.stream_info("IMAGES")).state.messages == n
        return rate
    finally:
        await nc.close()


@pytest.mark.timeout(300)
async def test_sync_always_cost(tmp_path: Path) -> None:
    n = size(5000, 1000)
    rates: dict[str, list[float]] = {"always": [], "default": []}
    for _ in range(3):
        for mode, sync in (("default", False), ("always", True)):
            proc, port = start_nats(tmp_path / f"{mode}{len(rates[mode])}", sync)
            try:
                rates[mode].append(await acked_publishes_per_s(port, n))
            finally:
                proc.terminate()
                proc.wait(timeout=20)
    med = {m: sorted(r)[1] for m, r in rates.items()}
    print(
        f"acked JetStream publishes/s (median of 3, {n} each, 16 in flight): "
        f"sync always {med['always']:.0f}, default {med['default']:.0f}, "
        f"ratio {med['always'] / med['default']:.2f}; runs {rates}"
    )
    assert all(r > 0 for rs in rates.values() for r in rs)
