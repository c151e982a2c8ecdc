"""Fault injection against a private whole stack (kill -9, restarts, outages).

`make test` runs every scenario at a reduced size; `make chaos` (MESH_CHAOS_FULL=1) at the issue's full sizes.
The stack here is separate from the e2e one because these tests kill its processes.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
import redis

from actors.adapters.config_client import ConfigClient
from actors.settings import Settings
from ops.stack.supervisor import Stack
from tests.chaos.audit import (
    MODEL,
    in_flight_during,
    logged_upserts,
    measure_repeats,
    slow_answers,
    vector_docs,
)
from tests.helpers import ops_connection, running_stack, upload_with_retry, wait_until

FULL = os.environ.get("MESH_CHAOS_FULL") == "1"


def size(full: int, reduced: int) -> int:
    """The full size under `make chaos`, the reduced one under `make test`."""
    return full if FULL else reduced


@pytest.fixture(scope="session")
def chaos_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir, models_dir = tmp_path_factory.mktemp("chaos"), tmp_path_factory.mktemp("chaos_models")
    with running_stack(data_dir, model_repository=models_dir) as stack:
        asyncio.run(_fast_retries(stack.settings))
        yield stack


async def _fast_retries(s: Settings) -> None:
    """Short backoff so that faults are retried within a test's time (the policy, not the mechanism)."""
    async with ops_connection(s) as nc:
        cfg = ConfigClient(nc)
        await cfg.set("backoff_s", [0.5, 1.0, 2.0, 4.0])
        await cfg.set("max_deliver", 8)


@pytest.fixture(scope="session")
def stack(chaos_mesh: Stack) -> Stack:
    """The folder's stack, for the shared fixtures of tests/conftest.py (``ops_nc``)."""
    return chaos_mesh


@pytest.fixture(scope="session")
def chaos_settings(chaos_mesh: Stack) -> Settings:
    return chaos_mesh.settings


@pytest.fixture
async def gw(chaos_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    url = f"http://{chaos_settings.host}:{chaos_settings.gateway_port}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        yield c


async def ingest(
    client: httpx.AsyncClient, images: list[bytes], concurrency: int = 8
) -> tuple[list[str], list[list[int]]]:
    """Upload every image with ``concurrency`` clients; returns ids (in order) and each upload's statuses."""
    sem = asyncio.Semaphore(concurrency)

    async def one(data: bytes) -> tuple[str, list[int]]:
        async with sem:
            return await upload_with_retry(client, data)

    results = await asyncio.gather(*(one(d) for d in images))
    return [r[0] for r in results], [r[1] for r in results]


def index_ids(settings: Settings, model: str = MODEL) -> list[str]:
    """Every image id that has a vector in the model's index (one key per vector)."""
    prefix = f"{settings.redis_prefix}:vec:{model}:"
    with redis.Redis.from_url(settings.redis_server_url) as r:
        return [k.decode()[len(prefix) :] for k in r.scan_iter(match=prefix + "*", count=1000)]


def assert_ingest_invariants(
    settings: Settings,
    ids: list[str],
    images: list[bytes],
    records: dict[str, dict],
    *,
    fault_windows: Sequence[tuple[float, float]] = (),
    jobs_at_fault: int | None = None,
) -> dict[str, object]:
    """N accepted distinct images: N done, each with exactly one document in the index, none stuck, and work
    repeated only where a fault caused it.

    ``fault_windows``: the wall-clock ``(start, end)`` of each fault (none: nothing touched the processing).
    An image whose processing started again must have been in flight during one (``in_flight_during``); an
    image processed more than once (upserted twice, or done twice) must also have been among the
    ``jobs_at_fault`` the coordinator held when the fault struck (its ``mesh_jobs_in_flight`` then, summed
    over the faults; None: the window count). A request of the job that timed out outside the fault windows
    (``slow_answers``: a loaded machine) also explains a repeat or a restart. Prints and returns the figures,
    the repeat figures among them.
    """
    mine = set(ids)
    during = in_flight_during({i: records[i] for i in mine}, fault_windows)
    at_fault = during if jobs_at_fault is None else min(during, jobs_at_fault)
    docs = vector_docs(settings, mine)
    repeats = measure_repeats(settings, {i: records[i] for i in mine})
    slow = slow_answers(settings, mine, fault_windows)  # a timeout on a loaded machine, not the test's fault
    repeated = [i for i in repeats.repeated if i not in slow]
    restarted = [i for i in repeats.restarted if i not in slow]
    figures: dict[str, object] = {
        "images": len(images),
        "distinct_ids": len(mine),
        "done": sum(1 for i in mine if records[i]["status"] == "done"),
        "vectors": len(docs),
        "duplicate_vectors": sum(n - 1 for n in docs.values()),
        "stuck": sum(1 for i in mine if records[i]["status"] not in ("done", "error")),
        **repeats.figures(),
        "timed_out_outside_faults": len(slow),
        "repeats_after_timeout": len(repeats.repeated) - len(repeated),
        "upserts_after_timeout": sum(len(u) - 1 for u in logged_upserts(settings, slow).values()),
        "in_flight_during_fault": during,
        "jobs_at_fault": at_fault,
    }
    print(f"ingest figures: {figures}")
    assert figures["distinct_ids"] == len(images), (
        "two uploads of different bytes got the same id, or vice versa"
    )
    assert figures["done"] == len(images), {
        i: records[i].get("error") for i in ids if records[i]["status"] != "done"
    }
    assert figures["vectors"] == len(images), f"images without a vector: {sorted(mine - set(docs))[:10]}"
    twice = {i: n for i, n in docs.items() if n > 1}
    assert figures["duplicate_vectors"] == 0, f"duplicate vectors (documents per image): {twice}"
    assert figures["stuck"] == 0
    assert len(repeated) <= at_fault, (
        f"{len(repeated)} images processed more than once without a timeout to explain it, {at_fault} jobs "
        f"held when a fault struck: upserted twice {repeats.upserted_twice[:5]}, done twice "
        f"{repeats.done_twice[:5]}; histories {[records[i].get('history') for i in repeated[:2]]}"
    )
    assert len(restarted) <= during, (
        f"{len(restarted)} images whose processing started again without a timeout to explain it, {during} "
        f"in flight during a fault: {restarted[:5]}; histories {[records[i].get('history') for i in restarted[:2]]}"
    )
    return figures


def pid_of(stack: Stack, name: str) -> int:
    pid = stack.pids()[name]
    assert pid is not None, f"no pid for {name}"
    return pid


async def wait_healthy(stack: Stack, name: str, timeout_s: float = 60) -> None:
    svc = next(s for s in stack.services if s.name == name)
    deadline = time.monotonic() + timeout_s
    while (problem := await asyncio.to_thread(svc.probe)) is not None:
        assert time.monotonic() < deadline, f"{name} not healthy again: {problem}"
        await asyncio.sleep(0.5)


async def wait_restarted(stack: Stack, name: str, old_pid: int, timeout_s: float = 90) -> int:
    """Until supervisord has started a new ``name`` (a pid other than ``old_pid``) and it is healthy: the old
    process cannot answer the probe any more. Returns the new pid."""
    await wait_until(
        f"a new {name} pid", lambda: stack.pids()[name] not in (None, old_pid), timeout_s, every_s=0.05
    )
    await wait_healthy(stack, name, timeout_s)
    return pid_of(stack, name)


def data_dir(stack: Stack) -> Path:
    return stack.settings.data_dir
