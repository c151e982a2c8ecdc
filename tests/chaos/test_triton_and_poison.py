"""Triton down mid-ingest (work waits, nothing errors), and a poison job (error, dead letter, replay)."""

from __future__ import annotations

import asyncio
import hashlib
import time

import httpx
import pytest

from actors import contract
from actors.adapters.config_client import ConfigClient
from actors.adapters.object_store import ObjectStore
from actors.runtime import connect_nats
from actors.settings import Settings
from ops.stack.supervisor import Stack
from tests.chaos.audit import assert_nothing_left, done_entries, jobs_in_flight, wait_recovered
from tests.chaos.conftest import assert_ingest_invariants, ingest, size
from tests.chaos.test_kills import N
from tests.helpers import upload_with_retry, wait_terminal
from tests.images import distinct_jpegs


@pytest.mark.timeout(900)
async def test_triton_down_mid_ingest_nothing_errors(chaos_mesh: Stack, gw: httpx.AsyncClient) -> None:
    down_s = size(30, 8)
    images = distinct_jpegs(N, seed=50_005)
    first, _ = await ingest(gw, images[:5])
    in_flight = [await asyncio.to_thread(jobs_in_flight, chaos_mesh.settings)]
    stopped_at = time.time()
    chaos_mesh.stop_service("triton")
    try:
        t0 = time.monotonic()
        # uploads keep being accepted while Triton is down: the work queues up
        during, statuses = await ingest(gw, images[5:])
        assert all(s[-1] in (200, 202) for s in statuses)
        status = (await gw.get("/status")).json()
        assert status["servers"]["triton"] == "down", status
        await asyncio.sleep(max(0.0, down_s - (time.monotonic() - t0)))
    finally:
        in_flight.append(await asyncio.to_thread(jobs_in_flight, chaos_mesh.settings))
        chaos_mesh.start_service("triton", timeout_s=180)
    window = (stopped_at, await wait_recovered(gw))
    ids = first + during
    records = await wait_terminal(gw, ids, timeout_s=300)
    figures = assert_ingest_invariants(
        chaos_mesh.settings, ids, images, records, fault_windows=[window], jobs_at_fault=sum(in_flight)
    )
    print(f"triton down {down_s}s: {figures}; jobs in flight at the stop and the restart {in_flight}")
    assert not [i for i in ids if records[i]["status"] == "error"]
    await assert_nothing_left(chaos_mesh.settings)


@pytest.mark.timeout(600)
async def test_poison_job_is_dead_lettered_and_replayed(chaos_mesh: Stack, gw: httpx.AsyncClient) -> None:
    s: Settings = chaos_mesh.settings
    nc = await connect_nats(s, "ops")
    config = ConfigClient(nc)
    before = await config.get()
    dead: list[contract.DeadLetter] = []

    async def collect(msg) -> None:  # type: ignore[no-untyped-def]
        dead.append(contract.decode(msg.data, contract.DeadLetter))

    sub = await nc.subscribe(contract.DEAD_SUBJECT, cb=collect)
    data = distinct_jpegs(1, seed=60_006)[0]
    chaos_mesh.stop_service("coordinator")
    try:
        await config.set("max_deliver", 3)
        image_id, _ = await upload_with_retry(gw, data)
        record = (await gw.get(f"/images/{image_id}")).json()
        key = f"images/{image_id[:2]}/{image_id}"
        async with ObjectStore(s) as objects:
            await objects.delete(key)  # behind the pipeline's back
        chaos_mesh.start_service("coordinator")

        records = await wait_terminal(gw, [image_id], timeout_s=120)
        assert records[image_id]["status"] == "error"
        assert records[image_id]["error"]["code"] == "object_missing"
        assert "3 deliveries" in records[image_id]["error"]["message"]
        deadline = time.monotonic() + 10
        while not dead and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a list the callback fills
            await asyncio.sleep(0.2)
        assert [d.job.image_id for d in dead] == [image_id] and dead[0].deliveries == 3

        # the cause is fixed (the object is back): replay re-runs it to done
        async with ObjectStore(s) as objects:
            await objects.put(key, data, record["content_type"])
        reply = await asyncio.create_subprocess_exec(
            ".venv/bin/python", "-m", "ops.replay", image_id, env=_env(s), stdout=asyncio.subprocess.PIPE
        )
        out, _ = await reply.communicate()
        assert reply.returncode == 0, out
        records = await wait_terminal(gw, [image_id], timeout_s=60)
        assert records[image_id]["status"] == "done"
        assert (
            hashlib.sha256((await gw.get(f"/images/{image_id}/content")).content).hexdigest()
            == record["sha256"]
        )
        # three failed deliveries and a replay: processed to done once
        assert done_entries(records[image_id]["history"]) == 1, records[image_id]["history"]
    finally:
        await config.set("max_deliver", before.max_deliver)
        await sub.unsubscribe()
        await nc.close()
        if chaos_mesh.health()["coordinator"] is not None:
            chaos_mesh.start_service("coordinator")
    await assert_nothing_left(s)  # the dead letter and the replay leave nothing behind


def _env(s: Settings) -> dict[str, str]:
    import os

    from ops.stack.supervisor import settings_env

    return {**os.environ, **settings_env(s)}
