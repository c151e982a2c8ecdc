"""A coordinator's memory under big images (issue 12, point 6): its decodes stay within the decode budget.

32 jobs of 49 MP PNGs (7000 x 7000, RGB and RGBA by turns: a decoded frame is ~196 MB in Pillow, and an RGBA one
peaks at ~441 MB while it is laid over white) are queued while the coordinator is stopped; then one fresh
coordinator, with the default ``MESH_DECODE_BUDGET_BYTES``, takes all 32 in flight at once and processes them.
Its lifetime peak RSS (VmHWM) stays under 1 GB. Without the budget each of the 32 jobs held its decoded frame
until it was embedded. The gateway's figure (8 concurrent 49 MP uploads) is in ``test_hostile_input.py``.
"""

from __future__ import annotations

import asyncio
import functools
import re
import struct
import time
import zlib

import httpx

from actors.settings import Settings
from ops.stack.supervisor import Stack
from tests.chaos.audit import assert_nothing_left, measure_repeats
from tests.chaos.conftest import ingest, pid_of
from tests.chaos.test_hostile_input import peak_rss_mb
from tests.helpers import wait_terminal

JOBS = 32
SIDE = 7000  # 49 MP, under the default pixel limit of 50 MP
MAX_COORDINATOR_RSS_MB = 1000


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.cache
def _idat(side: int, color_type: int) -> bytes:
    """A horizontal gradient, every row the same: the first row unfiltered, the others PNG filter Up (zeros),
    so 147-196 MB of pixels compress to a few hundred KB. Built once per colour type."""
    channels = {2: 3, 6: 4}[color_type]
    first = bytes((x * 255 // side + c * 60) % 256 for x in range(side) for c in range(channels))
    up = b"\x02" + bytes(side * channels)
    co = zlib.compressobj(6)
    parts = [co.compress(b"\x00" + first)]
    parts += [co.compress(up) for _ in range(side - 1)]
    parts.append(co.flush())
    return b"".join(parts)


def big_png(seed: int, color_type: int, side: int = SIDE) -> bytes:
    """A valid ``side`` x ``side`` 8-bit PNG (2: RGB, 6: RGBA); a text chunk makes each seed's bytes distinct."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"tEXt", b"Comment\x00decode-memory " + str(seed).encode())
        + _chunk(b"IDAT", _idat(side, color_type))
        + _chunk(b"IEND", b"")
    )


async def _watch_in_flight(url: str, seen: list[float], stop: asyncio.Event) -> None:
    """The coordinator's ``mesh_jobs_in_flight`` every 0.2 s, until ``stop``."""
    pattern = re.compile(r"^mesh_jobs_in_flight (\S+)$", re.MULTILINE)
    async with httpx.AsyncClient(timeout=5) as c:
        while not stop.is_set():
            try:
                m = pattern.search((await c.get(url)).text)
                if m:
                    seen.append(float(m.group(1)))
            except httpx.HTTPError:
                pass  # not listening yet, or busy: the next poll will do
            await asyncio.sleep(0.2)


async def test_32_queued_49_mp_pngs_keep_one_coordinator_under_1_gb(
    chaos_mesh: Stack, chaos_settings: Settings, gw: httpx.AsyncClient
) -> None:
    started = time.monotonic()
    images = [big_png(seed, 2 if seed % 2 == 0 else 6) for seed in range(JOBS)]
    await asyncio.to_thread(chaos_mesh.stop_service, "coordinator")
    in_flight: list[float] = []
    stop = asyncio.Event()
    try:
        ids, _ = await ingest(gw, images, concurrency=8)  # the gateway validates each: queued, not processed
        queued = time.monotonic()
        metrics = f"http://{chaos_settings.host}:{chaos_settings.coordinator_http_port}/metrics"
        watcher = asyncio.create_task(_watch_in_flight(metrics, in_flight, stop))
        await asyncio.to_thread(chaos_mesh.start_service, "coordinator")
        pid = pid_of(chaos_mesh, "coordinator")
        records = await wait_terminal(gw, ids, timeout_s=300)
        rss = peak_rss_mb(pid)
        stop.set()
        await watcher
    finally:
        stop.set()
        if chaos_mesh.health()["coordinator"] is not None:
            await asyncio.to_thread(chaos_mesh.start_service, "coordinator")
    done = sum(1 for r in records.values() if r["status"] == "done")
    print(
        f"\n{JOBS} x {SIDE}x{SIDE} PNG (RGB/RGBA, {len(images[0]) // 1024}/{len(images[1]) // 1024} KB): "
        f"{done} done; coordinator peak RSS {rss:.0f} MB, most jobs in flight {max(in_flight, default=0):.0f}; "
        f"queueing {queued - started:.1f} s, processing {time.monotonic() - queued:.1f} s"
    )
    assert done == JOBS, {i: r.get("error") for i, r in records.items() if r["status"] != "done"}
    assert max(in_flight, default=0) >= JOBS // 2  # the jobs really were in flight together
    assert rss < MAX_COORDINATOR_RSS_MB
    repeats = measure_repeats(chaos_settings, records)  # the coordinator was stopped before any job: no fault
    print(f"repeats: {repeats.figures()}")
    assert not repeats.repeated and not repeats.restarted, repeats
    await assert_nothing_left(chaos_settings)
