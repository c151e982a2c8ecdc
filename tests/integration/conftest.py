"""Real servers for integration tests: started once per session, from the same code `make run` uses, on free
ports in a temporary folder, so a running `make run` stack never disturbs them (and they never disturb it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors.settings import Settings
from ops.stack.supervisor import Stack
from tests.helpers import running_stack


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """NATS (JetStream, nats.conf users), Redis with RediSearch, and the S3 store."""
    with running_stack(
        tmp_path_factory.mktemp("servers"), only=("nats", "redis", "s3"), export_models=False, timeout_s=120
    ) as stack:
        yield stack


@pytest.fixture(scope="session")
def stack(servers: Stack) -> Stack:
    """The folder's stack, for the shared fixtures of tests/conftest.py (``ops_nc``)."""
    return servers


@pytest.fixture(scope="session")
def server_settings(servers: Stack) -> Settings:
    return servers.settings
