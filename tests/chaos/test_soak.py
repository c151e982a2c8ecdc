"""Soak: 16 uploaders at saturation for minutes, no errors, every image processed once, and no process's
memory keeps growing.

Each uploader is a closed loop (upload a new image, now and then the bytes of one it already sent, then wait for
its image to be done), so the mesh runs at its own throughput for the whole time and the backlog never grows
without bound: what is measured is steady state, not a queue that drains for minutes after the load stops.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from actors.settings import Settings
from ops.stack.supervisor import Stack
from tests.chaos.audit import assert_nothing_left
from tests.chaos.conftest import assert_ingest_invariants, size
from tests.helpers import TERMINAL, upload, wait_status, wait_terminal
from tests.images import distinct_jpegs

UPLOADERS = 16
DURATION_S = size(180, 30)
# Warm-up: long enough that every pool (HTTP connections, the preprocessing threads and their malloc arenas,
# prometheus label children, the index's connection) has been filled at full concurrency before the baseline.
WARMUP_S = size(45, 12)
MAX_GROWTH = 0.10
SEED = 5_100_000  # far from every other test's seeds: soak images never collide with theirs
WATCHED = ("gateway", "coordinator", "config", "indexer")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass
class Tally:
    uploads: int = 0
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


async def uploader(n: int, client: httpx.AsyncClient, stop_at: float, tally: Tally) -> None:
    """Upload new images one after another until ``stop_at``; every 5th round, re-send old bytes too."""
    batch: list[bytes] = []
    mine: list[tuple[bytes, str]] = []
    rounds = 0
    while time.monotonic() < stop_at:
        if not batch:
            seed = SEED + n * 10_000 + rounds
            batch = await asyncio.to_thread(distinct_jpegs, 16, (160, 120), seed)
        data = batch.pop()
        started = time.monotonic()
        r = await upload(client, data, f"s{n}.jpg")
        tally.uploads += 1
        if r.status_code != 202:
            tally.errors.append(f"upload {r.status_code}: {r.text[:120]}")
            continue
        image_id = r.json()["image_id"]
        tally.ids.append(image_id)
        tally.images.append(data)
        mine.append((data, image_id))
        try:
            rec = await wait_status(client, [image_id], TERMINAL, 120, through_outages=True, every_s=0.3)
            status = rec[image_id]["status"]
        except AssertionError as e:  # a figure of the soak, not a failure of this one upload's client
            status = str(e)
        tally.latencies.append(time.monotonic() - started)
        if status != "done":
            tally.errors.append(f"{image_id} ended {status}")
        rounds += 1
        if rounds % 5 == 0:
            old, old_id = mine[rounds // 2]
            r = await upload(client, old, "again.jpg")
            tally.uploads += 1
            tally.duplicates += 1
            body = r.json()
            if r.status_code != 200 or body.get("image_id") != old_id or body.get("duplicate") is not True:
                tally.errors.append(f"re-upload {r.status_code}: {r.text[:120]} (expected 200 {old_id})")


async def sample_rss(
    pids: dict[str, int], stop: asyncio.Event, out: list[tuple[float, dict[str, int]]]
) -> None:
    start = time.monotonic()
    while not stop.is_set():
        out.append((time.monotonic() - start, {name: rss_kib(pid) for name, pid in pids.items()}))
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            pass


def window_median(samples: list[tuple[float, dict[str, int]]], name: str, lo: float, hi: float) -> float:
    values = [rss[name] for t, rss in samples if lo <= t <= hi]
    assert values, f"no RSS sample of {name} between {lo}s and {hi}s"
    return statistics.median(values)


async def test_soak_no_errors_and_flat_memory(
    chaos_mesh: Stack, chaos_settings: Settings, gw: httpx.AsyncClient
) -> None:
    pids = {name: chaos_mesh.pids()[name] for name in WATCHED}
    assert all(pids.values()), pids
    watched = {name: pid for name, pid in pids.items() if pid is not None}
    tally = Tally()
    samples: list[tuple[float, dict[str, int]]] = []
    stop_sampling = asyncio.Event()
    started = time.monotonic()
    limits = httpx.Limits(max_connections=UPLOADERS * 2)
    async with httpx.AsyncClient(base_url=str(gw.base_url), timeout=60, limits=limits) as client:
        sampler = asyncio.create_task(sample_rss(watched, stop_sampling, samples))
        try:
            stop_at = started + DURATION_S
            await asyncio.gather(*(uploader(n, client, stop_at, tally) for n in range(UPLOADERS)))
        finally:
            stop_sampling.set()
            await sampler
    elapsed = time.monotonic() - started

    # Method: RSS is sampled every second. The baseline is the median of the samples in the last 3 s of the
    # warm-up, the end figure the median of the last 3 s of load (the median drops a single allocator spike).
    # A leak grows with the work done, so what the mesh did after the warm-up must not grow it by 10%.
    # A process that died and was restarted mid-soak would look like a shrink: it must not have.
    assert {name: chaos_mesh.pids()[name] for name in WATCHED} == pids, "a watched process restarted"
    lat = sorted(tally.latencies)
    print(
        f"\nsoak: {UPLOADERS} uploaders, {elapsed:.0f}s (warm-up {WARMUP_S}s): uploads={tally.uploads} "
        f"new={len(tally.ids)} duplicates_resent={tally.duplicates} errors={len(tally.errors)} "
        f"images/s={len(tally.ids) / elapsed:.1f} "
        f"upload-to-done p50={lat[len(lat) // 2]:.2f}s p95={lat[int(len(lat) * 0.95)]:.2f}s"
    )
    for t, rss in samples:
        print(f"  rss t={t:5.1f}s " + " ".join(f"{n}={v / 1024:.1f}MiB" for n, v in rss.items()))
    end_t = samples[-1][0]
    growth: dict[str, float] = {}
    for name in watched:
        base = window_median(samples, name, WARMUP_S - 3, WARMUP_S)
        end = window_median(samples, name, end_t - 3, end_t)
        growth[name] = (end - base) / base
        print(
            f"  {name}: after warm-up {base / 1024:.1f} MiB, end {end / 1024:.1f} MiB, growth {growth[name]:+.1%}"
        )

    assert not tally.errors, tally.errors[:10]
    assert len(tally.ids) >= UPLOADERS * 3, "the soak did too little work to mean anything"
    records = await wait_terminal(gw, tally.ids, timeout_s=120)
    assert_ingest_invariants(chaos_settings, tally.ids, tally.images, records)  # no fault: no repeat
    assert all(g < MAX_GROWTH for g in growth.values()), {n: f"{g:+.1%}" for n, g in growth.items()}
    await assert_nothing_left(chaos_settings)
