"""Fixtures shared by every folder. Infrastructure fixtures are opt-in (never autouse): unit tests start nothing.

Each folder that runs servers starts its stack once per session with ``tests.helpers.running_stack`` and names
it ``stack`` (besides its own name: ``mesh``, ``chaos_mesh``, ``servers``); the fixtures here work on that stack.
Helpers (uploads, waits, settings) live in ``tests/helpers.py``: import them from there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from ops.stack.ports import free_port, free_port_block
from ops.stack.supervisor import Stack
from tests.helpers import ops_connection, s3_client, test_settings

__all__ = ["free_port", "free_port_block", "s3_client", "test_settings"]  # older imports from here


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository for the session's whole-mesh stacks (tests/e2e, tests/temporal), exported once:
    EfficientNet-Lite0 (real weights) and a small random CLIP."""
    return tmp_path_factory.mktemp("model_repository")


@pytest.fixture
async def ops_nc(stack: Stack) -> AsyncIterator[Client]:
    """A NATS connection to the folder's stack as the ``ops`` user (every permission)."""
    async with ops_connection(stack.settings) as nc:
        yield nc
