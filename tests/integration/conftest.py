"""Real servers for integration tests: started once per session, from the same code `make run` uses, on free
ports in a temporary folder, so a running `make run` stack never disturbs them (and they never disturb it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from actors.runtime import connect_nats
from actors.settings import Settings
from ops.stack.supervisor import Stack
from tests.conftest import test_settings


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """NATS (JetStream, nats.conf users), Redis with RediSearch, and the S3 store."""
    settings = test_settings(tmp_path_factory.mktemp("servers"))
    stack = Stack(settings, only=("nats", "redis", "s3"))
    stack.launch_supervisord()
    try:
        stack.start(timeout_s=120)
        yield stack
    finally:
        stack.shutdown()


@pytest.fixture(scope="session")
def server_settings(servers: Stack) -> Settings:
    return servers.settings


@pytest.fixture
async def ops_nc(server_settings: Settings) -> AsyncIterator:
    """A NATS connection as the `ops` user (all permissions)."""
    nc = await connect_nats(server_settings, "ops")
    yield nc
    await nc.close()
