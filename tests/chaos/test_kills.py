"""kill -9 of a server or an actor in the middle of an ingest: every accepted image still reaches done, once.

Each scenario uploads N distinct images through the gateway (clients retry 503s like real clients), injects its
fault while they are being processed, then checks: N/N done, N vectors in the index, no duplicate, none stuck.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.settings import Settings
from ops.stack.supervisor import Stack
from tests.chaos.conftest import assert_ingest_invariants, pid_of, size, wait_restarted
from tests.helpers import ops_connection, upload, upload_with_retry, wait_terminal, wait_until
from tests.images import distinct_jpegs

N = size(300, 40)
Fault = Callable[[Stack, httpx.AsyncClient], Awaitable[dict[str, object]]]


async def run_with_fault(
    stack: Stack, gw: httpx.AsyncClient, seed: int, fault: Fault, *, start_after: int = 8
) -> dict[str, object]:
    """Ingest N images; once ``start_after`` are accepted, run ``fault``; then check the invariants."""
    images = distinct_jpegs(N, seed=seed)
    started = time.monotonic()
    accepted = asyncio.Event()
    count = {"n": 0}

    async def upload_all() -> tuple[list[str], list[list[int]]]:
        sem = asyncio.Semaphore(8)

        async def one(data: bytes) -> tuple[str, list[int]]:
            async with sem:
                result = await upload_with_retry(gw, data, deadline_s=240)
                count["n"] += 1
                if count["n"] >= start_after:
                    accepted.set()
                return result

        results = await asyncio.gather(*(one(d) for d in images))
        return [r[0] for r in results], [r[1] for r in results]

    async def inject() -> dict[str, object]:
        await accepted.wait()
        return await fault(stack, gw)

    (ids, statuses), figures = await asyncio.gather(upload_all(), inject())
    records = await wait_terminal(gw, ids, timeout_s=300)
    result: dict[str, object] = dict(assert_ingest_invariants(stack.settings, ids, images, records))
    result.update(figures)
    result["seconds"] = round(time.monotonic() - started, 1)
    result["images_per_s"] = round(N / float(result["seconds"]), 2)  # type: ignore[arg-type]
    result["upload_503s"] = sum(s.count(503) for s in statuses)
    print(f"chaos figures: {result}")
    return result


# what each actor counts once it has done a piece of the ingest (docs/OPERATIONS.md lists the metrics)
WORK_DONE = {"coordinator": "mesh_jobs_total", "indexer": "mesh_index_upserts_total"}


def work_done(settings: Settings, name: str) -> float:
    """How much of the ingest the running ``name`` process has done (its counter starts at 0 on a restart)."""
    port = getattr(settings, f"{name}_http_port")
    text = httpx.get(f"http://{settings.host}:{port}/metrics", timeout=5).text
    families = text_string_to_metric_families(text)
    return sum(s.value for f in families for s in f.samples if s.name == WORK_DONE[name])


async def wait_working(stack: Stack, name: str, timeout_s: float = 120) -> None:
    """Until the restarted ``name`` has done some of the ingest, or no job is left for it to do."""
    s = stack.settings
    async with ops_connection(s) as nc:
        js = nc.jetstream()

        async def working_or_idle() -> bool:
            if await asyncio.to_thread(work_done, s, name) > 0:
                return True
            info = await js.consumer_info(s.stream, s.consumer)
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_until(f"the new {name} at work", working_or_idle, timeout_s, every_s=0.1)


def kill_twice(name: str) -> Fault:
    """kill -9 ``name``; once supervisord's new process is at work, kill -9 that one too."""

    async def fault(stack: Stack, gw: httpx.AsyncClient) -> dict[str, object]:
        pids = []
        for kill in range(2):
            pid = pid_of(stack, name)
            os.kill(pid, signal.SIGKILL)
            pids.append(pid)
            await wait_restarted(stack, name, pid)  # supervisord restarts it
            if kill == 0:
                await wait_working(stack, name)  # so the second kill, too, lands mid-work
        assert pid_of(stack, name) not in pids
        return {"killed": f"{name} x2"}

    return fault


@pytest.mark.timeout(900)
async def test_kill_coordinator_twice_during_ingest(chaos_mesh: Stack, gw: httpx.AsyncClient) -> None:
    await run_with_fault(chaos_mesh, gw, 10_001, kill_twice("coordinator"))


@pytest.mark.timeout(900)
async def test_kill_indexer_twice_during_ingest(chaos_mesh: Stack, gw: httpx.AsyncClient) -> None:
    await run_with_fault(chaos_mesh, gw, 20_002, kill_twice("indexer"))


async def _kill_and_hold_down(
    stack: Stack,
    gw: httpx.AsyncClient,
    name: str,
    down_s: float,
    while_down: Callable[[], Coroutine[Any, Any, dict[str, object]]] | None = None,
) -> dict[str, object]:
    """kill -9 a server, keep it down (supervisord would restart it at once) for ``down_s`` and until
    ``while_down`` (a look at what clients see meanwhile) has returned, then start it again."""
    os.kill(pid_of(stack, name), signal.SIGKILL)
    stack.stop_service(name)  # hold it down: stops the instance supervisord may have restarted already
    watch = asyncio.create_task(while_down()) if while_down else None
    seen: dict[int, int] = {}
    deadline = time.monotonic() + down_s
    probe = distinct_jpegs(1, seed=int(time.time()) % 100_000 + 500_000)[0]
    ready_503 = False
    while time.monotonic() < deadline:
        ready = await gw.get("/ready")
        ready_503 |= ready.status_code == 503
        r = await upload(gw, probe, "p.jpg")
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code in (503, 202, 200), r.text
        await asyncio.sleep(0.5)  # paces the probes over the outage's length
    figures: dict[str, object] = {
        "down_s": down_s,
        "statuses_while_down": seen,
        "ready_503_while_down": ready_503,
    }
    if watch is not None:
        figures.update(await watch)
    stack.start_service(name, timeout_s=120)
    return figures


def statuses_while_down(figures: dict[str, object]) -> dict[int, int]:
    seen = figures["statuses_while_down"]
    assert isinstance(seen, dict)
    return seen


@pytest.mark.timeout(900)
async def test_kill_nats_mid_ingest(chaos_mesh: Stack, gw: httpx.AsyncClient) -> None:
    async def fault(stack: Stack, client: httpx.AsyncClient) -> dict[str, object]:
        figures = await _kill_and_hold_down(stack, client, "nats", size(10, 4))
        # while NATS is down no upload may be accepted: a 2xx would be an upload without a stored job
        assert set(statuses_while_down(figures)) == {503}, figures
        return figures

    await run_with_fault(chaos_mesh, gw, 30_003, fault)


@pytest.mark.timeout(900)
async def test_kill_redis_mid_ingest(chaos_mesh: Stack, gw: httpx.AsyncClient) -> None:
    known, _ = await upload_with_retry(gw, distinct_jpegs(1, seed=40_999)[0])
    await wait_terminal(gw, [known], timeout_s=60)

    async def fault(stack: Stack, client: httpx.AsyncClient) -> dict[str, object]:
        figures = await _kill_and_hold_down(
            stack, client, "redis", size(10, 4), while_down=lambda: _while_redis_down(client, known)
        )
        assert set(statuses_while_down(figures)) == {503}, figures
        assert figures["ready_503_while_down"]
        return figures

    result = await run_with_fault(chaos_mesh, gw, 40_004, fault)
    status = (await gw.get("/status")).json()
    assert status["index"]["state"] == "ready" and status["index"]["percent_indexed"] == 1.0
    assert result["done"] == N


async def _while_redis_down(client: httpx.AsyncClient, known: str) -> dict[str, object]:
    """What readers see while Redis is down: similar answers 503 with Retry-After; /status says the index is
    not ready. Called once Redis is down."""
    status: dict[str, Any] = {}

    async def redis_down_seen() -> bool:
        nonlocal status
        status = (await client.get("/status")).json()
        return bool(status["servers"]["redis"] != "ok")

    await wait_until("/status reports Redis down", redis_down_seen, timeout_s=30, every_s=0.2)
    assert status["index"]["state"] != "ready", status
    similar = await client.get(f"/images/{known}/similar")
    assert similar.status_code == 503 and similar.headers.get("retry-after"), similar.text
    return {"similar_while_down": similar.status_code, "index_state_while_down": status["index"]["state"]}
