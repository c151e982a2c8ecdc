"""Fault injection against a private whole stack (kill -9, restarts, outages).

`make test` runs every scenario at a reduced size; `make chaos` (MESH_CHAOS_FULL=1) at the issue's full sizes.
The stack here is separate from the e2e one because these tests kill its processes.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from actors.adapters.config_client import ConfigClient
from actors.settings import Settings
from ops.stack.supervisor import Stack
from tests.helpers import ops_connection, running_stack, upload_with_retry, wait_until

FULL = os.environ.get("MESH_CHAOS_FULL") == "1"
MODEL = "efficientnet_lite0"


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
    settings: Settings, ids: list[str], images: list[bytes], records: dict[str, dict]
) -> dict[str, int]:
    """N accepted distinct images: N done, N vectors, no duplicate, none stuck. Returns the figures."""
    figures = {
        "images": len(images),
        "done": sum(1 for i in set(ids) if records[i]["status"] == "done"),
        "distinct_ids": len(set(ids)),
    }
    in_index = index_ids(settings)
    mine = [i for i in in_index if i in set(ids)]
    figures["vectors"] = len(mine)
    figures["duplicate_vectors"] = len(mine) - len(set(mine))
    figures["stuck"] = sum(1 for i in set(ids) if records[i]["status"] not in ("done", "error"))
    print(f"ingest figures: {figures}")
    assert figures["distinct_ids"] == len(images), (
        "two uploads of different bytes got the same id, or vice versa"
    )
    assert figures["done"] == len(images), {
        i: records[i].get("error") for i in ids if records[i]["status"] != "done"
    }
    assert figures["vectors"] == len(images)
    assert figures["duplicate_vectors"] == 0 and figures["stuck"] == 0
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
