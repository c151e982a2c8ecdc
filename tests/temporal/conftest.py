"""The whole mesh on the Temporal workflow engine (``MESH_WORKFLOW_ENGINE=temporal``): Temporal's dev server
and a worker in the coordinator's place, started by the same code as ``make run``, on free ports.

The stack lives for this folder only (package scope): it is stopped before the next folder's stack starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from actors.settings import Settings
from ops.stack.supervisor import Stack
from tests.helpers import running_stack


@pytest.fixture(scope="package")
def mesh(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("temporal-mesh"),
        model_repository=models_dir,
        models="efficientnet_lite0,clip",
        workflow_engine="temporal",
    ) as stack:
        yield stack


@pytest.fixture(scope="package")
def stack(mesh: Stack) -> Stack:
    """The folder's stack, for the shared fixtures of tests/conftest.py (``ops_nc``)."""
    return mesh


@pytest.fixture(scope="package")
def settings(mesh: Stack) -> Settings:
    return mesh.settings


@pytest.fixture(scope="package")
def base_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.gateway_port}"


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as c:
        yield c
