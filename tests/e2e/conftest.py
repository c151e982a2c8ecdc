"""The whole mesh, started once per session by the same code as `make run`, on free ports in a temp folder."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from actors.runtime import connect_nats
from actors.settings import Settings
from ops.stack.prepare import prepare
from ops.stack.supervisor import Stack
from tests.conftest import test_settings


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository for the session: EfficientNet-Lite0 (real weights) and a small random CLIP."""
    return tmp_path_factory.mktemp("model_repository")


def mesh_settings(data_dir: Path, models_dir: Path, **overrides: object) -> Settings:
    return test_settings(
        data_dir,
        model_repository=models_dir,
        models="efficientnet_lite0,clip",
        **overrides,
    )


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Stack]:
    settings = mesh_settings(tmp_path_factory.mktemp("mesh"), models_dir)
    prepare(settings)
    stack = Stack(settings)
    stack.launch_supervisord()
    try:
        stack.start(timeout_s=240)
        yield stack
    finally:
        stack.shutdown()


@pytest.fixture(scope="session")
def settings(mesh: Stack) -> Settings:
    return mesh.settings


@pytest.fixture(scope="session")
def base_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.gateway_port}"


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as c:
        yield c


@pytest.fixture
async def ops_nc(settings: Settings) -> AsyncIterator:
    nc = await connect_nats(settings, "ops")
    yield nc
    await nc.close()


async def wait_status(
    client: httpx.AsyncClient, image_ids: list[str], statuses: set[str], timeout_s: float = 120
) -> dict[str, dict]:
    """Poll until every image is in one of ``statuses``; returns the records."""
    deadline = time.monotonic() + timeout_s
    records: dict[str, dict] = {}
    pending = list(image_ids)
    while pending:
        still = []
        for image_id in pending:
            r = await client.get(f"/images/{image_id}")
            assert r.status_code == 200, r.text
            rec = r.json()
            records[image_id] = rec
            if rec["status"] not in statuses:
                still.append(image_id)
        pending = still
        if pending and time.monotonic() > deadline:
            sample = {i: records[i]["status"] for i in pending[:5]}
            raise AssertionError(f"{len(pending)} images not in {statuses} after {timeout_s}s: {sample}")
        if pending:
            import asyncio

            await asyncio.sleep(0.5)
    return records
