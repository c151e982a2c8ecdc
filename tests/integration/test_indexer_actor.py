"""The indexer actor as operators run it: ``python -m actors indexer`` as the ``indexer`` NATS user."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from nats.aio.client import Client

from actors import contract
from actors.adapters.vector_index import VectorIndex
from actors.contract import (
    DeleteReply,
    DeleteRequest,
    IndexStats,
    QueryReply,
    QueryRequest,
    StatsRequest,
    UpsertReply,
    UpsertRequest,
)
from actors.errors import ServiceCallError
from actors.rpc import ERROR_CODE_HEADER, call
from actors.settings import Settings
from ops.stack.privileges import redis_grant_commands
from ops.stack.services import ROOT
from ops.stack.supervisor import settings_env
from tests.conftest import free_port


@dataclass
class Running:
    settings: Settings
    proc: asyncio.subprocess.Process
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


async def wait_ping(nc: Client, running: Running, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if running.proc.returncode is not None:
            pytest.fail(f"indexer exited with {running.proc.returncode}:\n{running.log_tail()}")
        try:
            await nc.request(f"$SRV.PING.{contract.INDEXER_SERVICE}", b"", timeout=0.5)
            return
        except Exception:
            await asyncio.sleep(0.1)
    pytest.fail(f"indexer never answered $SRV.PING:\n{running.log_tail()}")


@pytest.fixture
async def indexer(server_settings: Settings, ops_nc: Client, tmp_path: Path) -> AsyncIterator[Running]:
    """One indexer process with its own Redis prefix and HTTP port; killed if a test leaves it running."""
    settings = server_settings.model_copy(
        update={"redis_prefix": f"t_actor_{os.getpid()}_{tmp_path.name}", "indexer_http_port": free_port()}
    )
    with redis.Redis.from_url(settings.redis_server_url) as ops:  # the indexer's ACL user: this prefix too
        for command in redis_grant_commands(settings):
            ops.execute_command(*command)
    log = tmp_path / "indexer.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "actors",
            "indexer",
            cwd=ROOT,
            env={**os.environ, **settings_env(settings)},
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    running = Running(settings, proc, log)
    try:
        await wait_ping(ops_nc, running)
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        async with VectorIndex.from_settings(settings) as index:  # the session's Redis outlives this test
            for model in await index.models():
                await index.drop(model)


async def test_round_trip_over_nats(indexer: Running, ops_nc: Client) -> None:
    model = "m"
    for i, vec in enumerate(([1.0, 0.0, 0.0], [0.8, 0.2, 0.0], [0.0, 0.0, 1.0])):
        up = await call(
            ops_nc,
            contract.INDEX_UPSERT,
            UpsertRequest(model=model, image_id=f"i{i}", vector=vec),
            UpsertReply,
        )
        assert up.created is True
    again = UpsertRequest(model=model, image_id="i0", vector=[1.0, 0.0, 0.0], tags={"color": "red"})
    assert (await call(ops_nc, contract.INDEX_UPSERT, again, UpsertReply)).created is False

    q = QueryRequest(model=model, vector=[1.0, 0.0, 0.0], k=2, exclude_id="i0", ef_runtime=50)
    reply = await call(ops_nc, contract.INDEX_QUERY, q, QueryReply)
    assert [h.image_id for h in reply.results] == ["i1", "i2"]
    assert reply.results[0].score == pytest.approx(0.8 / (0.68**0.5), abs=1e-5)
    filtered = QueryRequest(model=model, vector=[0.0, 1.0, 0.0], filters={"color": "red"})
    assert [h.image_id for h in (await call(ops_nc, contract.INDEX_QUERY, filtered, QueryReply)).results] == [
        "i0"
    ]
    # the same query with the vector as float32 bytes (base64 in the JSON): what the mesh's own clients send
    as_bytes = QueryRequest(
        model=model, vector_f32=np.array([1.0, 0.0, 0.0], "<f4").tobytes(), k=2, exclude_id="i0"
    )
    assert (await call(ops_nc, contract.INDEX_QUERY, as_bytes, QueryReply)).results == reply.results

    stats = await call(ops_nc, contract.INDEX_STATS, StatsRequest(model=model), IndexStats)
    assert (stats.exists, stats.num_docs, stats.dim) == (True, 3, 3)
    assert (await call(ops_nc, contract.INDEX_DELETE, DeleteRequest(image_id="i1"), DeleteReply)).deleted == 1
    assert (await call(ops_nc, contract.INDEX_DELETE, DeleteRequest(image_id="i1"), DeleteReply)).deleted == 0
    stats = await call(ops_nc, contract.INDEX_STATS, StatsRequest(model=model), IndexStats)
    assert stats.num_docs == 2

    # the HTTP side: health, readiness (Redis answers) and the indexer's own metrics
    base = f"http://{indexer.settings.host}:{indexer.settings.indexer_http_port}"
    async with httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/ready")).status_code == 200
        metrics = (await http.get("/metrics")).text
    assert 'mesh_index_query_seconds_count{model="m"} 3.0' in metrics
    assert 'mesh_index_upserts_total{created="false",model="m"} 1.0' in metrics

    # cleanup: the index lives in the session's Redis
    for i in range(3):
        await call(ops_nc, contract.INDEX_DELETE, DeleteRequest(image_id=f"i{i}"), DeleteReply)


async def test_bad_requests_get_400(indexer: Running, ops_nc: Client) -> None:
    msg = await ops_nc.request(contract.INDEX_UPSERT, b'{"model": 1}', timeout=5)
    assert msg.headers and msg.headers[ERROR_CODE_HEADER] == "400"
    msg = await ops_nc.request(contract.INDEX_QUERY, b"not json", timeout=5)
    assert msg.headers and msg.headers[ERROR_CODE_HEADER] == "400"

    await call(
        ops_nc, contract.INDEX_UPSERT, UpsertRequest(model="m", image_id="a", vector=[1.0, 2.0]), UpsertReply
    )
    with pytest.raises(ServiceCallError) as err:
        await call(
            ops_nc, contract.INDEX_UPSERT, UpsertRequest(model="m", image_id="b", vector=[1.0]), UpsertReply
        )
    assert err.value.code == "400" and not err.value.retryable
    assert "dimension" in err.value.description
    for bad in (
        QueryRequest(model="m", vector=[1.0, 2.0], vector_f32=np.zeros(2, "<f4").tobytes()),  # both
        QueryRequest(model="m", vector_f32=b"\x00\x00\x80"),  # not whole float32s
        QueryRequest(model="m"),  # no vector at all
    ):
        with pytest.raises(ServiceCallError) as err:
            await call(ops_nc, contract.INDEX_QUERY, bad, QueryReply)
        assert err.value.code == "400" and not err.value.retryable, bad
    await call(ops_nc, contract.INDEX_DELETE, DeleteRequest(image_id="a"), DeleteReply)


async def test_ping_and_graceful_sigterm(indexer: Running, ops_nc: Client) -> None:
    ping = await ops_nc.request(f"$SRV.PING.{contract.INDEXER_SERVICE}", b"", timeout=2)
    assert b'"name":"indexer"' in ping.data.replace(b" ", b"")
    indexer.proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    code = await asyncio.wait_for(indexer.proc.wait(), timeout=10)
    assert code == 0, indexer.log_tail()
    assert time.monotonic() - start < 5
    assert '"actor.stopped"' in indexer.log_tail()
