"""The whole mesh, started once per session by the same code as `make run`, on free ports in a temp folder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from actors.settings import Settings
from ops.stack.supervisor import Stack
from tests.e2e.browser import chromium, console_errors, page
from tests.helpers import running_stack, upload, wait_status

# older imports from here (tests.helpers is the home); the browser fixtures, for every test of the folder
__all__ = ["chromium", "console_errors", "page", "upload", "wait_status"]


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("mesh"), model_repository=models_dir, models="efficientnet_lite0,clip"
    ) as stack:
        yield stack


@pytest.fixture(scope="session")
def stack(mesh: Stack) -> Stack:
    """The folder's stack, for the shared fixtures of tests/conftest.py (``ops_nc``)."""
    return mesh


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
