"""What Temporal adds or changes, seen from outside: the stack's processes and status, one workflow per image
whose steps are activities, a give-up that is an ``error`` record, a dead letter and a failed workflow, and a
worker killed (kill -9) while it holds jobs losing none of them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import httpx
from nats.aio.client import Client
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client as TemporalClient
from temporalio.client import WorkflowExecutionStatus

from actors import contract
from actors.adapters.object_store import ObjectStore, object_key
from actors.adapters.temporal_jobs import TemporalJobQueue, connect_temporal, workflow_id
from actors.adapters.workflow_store import WorkflowStore
from actors.contract import CoordinatorStatus, CoordinatorStatusRequest, DeadLetter, Status
from actors.settings import Settings
from ops.stack.supervisor import Stack, settings_env
from tests.helpers import upload_id, wait_status, wait_until
from tests.images import distinct_jpegs


async def temporal(settings: Settings) -> TemporalClient:
    return await connect_temporal(settings)


async def activities_of(client: TemporalClient, image_id: str) -> list[str]:
    """The activity types the image's latest workflow scheduled, in order."""
    names: list[str] = []
    async for event in client.get_workflow_handle(workflow_id(image_id)).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            names.append(event.activity_task_scheduled_event_attributes.activity_type.name)
    return names


async def status_of(client: TemporalClient, image_id: str) -> WorkflowExecutionStatus | None:
    return (await client.get_workflow_handle(workflow_id(image_id)).describe()).status


async def test_status_and_ps_show_temporal_and_its_worker(
    client: httpx.AsyncClient, settings: Settings, mesh: Stack
) -> None:
    body = (await client.get("/status")).json()
    assert body["workflow_engine"] == "temporal"
    assert body["servers"]["temporal"] == "ok", body["servers"]
    assert body["services"]["coordinator"] >= 1  # the worker answers the coordinator's NATS service

    env = {**os.environ, **settings_env(settings)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.stack", "ps", env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out
    rows = {line.split()[0]: line for line in out.decode().splitlines() if line.strip()}
    assert "temporal" in rows and "worker" in rows and "coordinator" not in rows, out.decode()


async def test_one_workflow_per_image_runs_the_steps_as_activities_and_refuses_a_second_start(
    client: httpx.AsyncClient, settings: Settings, mesh: Stack, ops_nc: Client
) -> None:
    t = await temporal(settings)
    first, second = distinct_jpegs(2, seed=16_001)
    image_id = await upload_id(client, first)
    await wait_status(client, [image_id], {"done"})
    assert await status_of(t, image_id) == WorkflowExecutionStatus.COMPLETED
    assert await activities_of(t, image_id) == ["mesh.plan", "mesh.embed", "mesh.index", "mesh.finish"]

    mesh.stop_service("worker")  # the workflow waits for a worker: a second start meets it running
    try:
        queued = await upload_id(client, second)
        assert await status_of(t, queued) == WorkflowExecutionStatus.RUNNING
        store = WorkflowStore(settings.redis_server_url, settings.redis_prefix)
        try:
            rec = await store.get(queued)
        finally:
            await store.close()
        assert rec is not None
        again = await TemporalJobQueue(ops_nc.jetstream(), t, settings.temporal_task_queue).publish_record(
            rec
        )
        assert again.duplicate, "a second workflow of one image started while the first runs"
    finally:
        mesh.start_service("worker")
    done = (await wait_status(client, [queued], {"done"}))[queued]
    assert [h["status"] for h in done["history"] if "status" in h].count("done") == 1


async def test_a_give_up_is_an_error_record_a_dead_letter_and_a_failed_workflow(
    client: httpx.AsyncClient, settings: Settings, mesh: Stack, ops_nc: Client
) -> None:
    t = await temporal(settings)
    data, other = distinct_jpegs(2, seed=16_101)
    dead: list[DeadLetter] = []

    async def collect(msg: object) -> None:
        dead.append(contract.decode(msg.data, DeadLetter))  # type: ignore[attr-defined]

    sub = await ops_nc.subscribe(contract.DEAD_SUBJECT, cb=collect)
    mesh.stop_service("worker")
    try:
        image_id = await upload_id(client, data)
        async with ObjectStore(settings) as objects:  # other bytes behind the pipeline's back: permanent
            await objects.put(object_key(image_id), other, "image/jpeg")
    finally:
        mesh.start_service("worker")
    try:
        rec = (await wait_status(client, [image_id], {"error", "done"}, timeout_s=90))[image_id]
        assert rec["status"] == "error" and rec["error"]["code"] == "sha256_mismatch", rec
        await wait_until("the dead letter", lambda: any(d.job.image_id == image_id for d in dead), 30)
    finally:
        await sub.unsubscribe()
    letter = next(d for d in dead if d.job.image_id == image_id)
    assert letter.code == "sha256_mismatch" and letter.deliveries == 1  # permanent: no retry
    assert await status_of(t, image_id) == WorkflowExecutionStatus.FAILED

    reply = await ops_nc.request(
        contract.COORDINATOR_STATUS, contract.encode(CoordinatorStatusRequest()), timeout=10
    )
    status = contract.decode(reply.data, CoordinatorStatus)
    assert status.failed >= 1 and status.pending >= 0  # this worker's counts (it was started in this test)

    # mesh check looks at Temporal's side too: a failed workflow whose record is not `error` is an anomaly
    assert await mesh_check(settings, "workflow_failed_without_error") == []
    store = WorkflowStore(settings.redis_server_url, settings.redis_prefix)
    try:
        await store.update(image_id, status=Status.DONE)  # planted: the give-up never reached the record
        assert await mesh_check(settings, "workflow_failed_without_error") == [image_id]
    finally:
        await store.update(image_id, status=Status.ERROR)
        await store.close()


async def mesh_check(settings: Settings, kind: str) -> list[str]:
    """``mesh check --json`` as an operator runs it: the example images of one anomaly kind."""
    env = {**os.environ, **settings_env(settings)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", "check", "--json", env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    report = json.loads(out)
    assert report["scanned"]["workflows"] >= 1, report
    examples: list[str] = report["examples"].get(kind, [])
    assert report["anomalies"][kind] == len(examples), report
    return examples


async def test_a_worker_killed_while_it_holds_jobs_loses_none(
    client: httpx.AsyncClient, settings: Settings, mesh: Stack
) -> None:
    images = distinct_jpegs(30, seed=16_201)
    ids = list(await asyncio.gather(*(upload_id(client, data) for data in images)))
    url = f"http://{settings.host}:{settings.coordinator_http_port}/metrics"

    def holding() -> bool:
        try:
            text = httpx.get(url, timeout=2).text
        except httpx.HTTPError:
            return False
        return any(
            line.startswith("mesh_jobs_in_flight ") and float(line.split()[1]) > 0
            for line in text.splitlines()
        )

    await wait_until("the worker holding jobs", holding, 120, every_s=0.02)
    pid = mesh.pids()["worker"]
    assert pid
    os.kill(pid, signal.SIGKILL)
    statuses = [(await client.get(f"/images/{i}")).json()["status"] for i in ids]
    assert statuses.count("done") < len(ids), "every image was done at the kill: it hit no work in flight"
    await wait_until("the worker restarted", lambda: mesh.pids().get("worker") not in (None, pid), 60)
    # its activities' heartbeats stop: after the heartbeat timeout Temporal runs them on the new worker
    records = await wait_status(client, ids, {"done"}, timeout_s=240)
    for image_id, rec in records.items():
        states = [h["status"] for h in rec["history"] if "status" in h]
        assert states.count("done") == 1, (image_id, states)

    env = {**os.environ, **settings_env(settings)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", "check", "--json", env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and json.loads(out)["ok"] is True, out.decode()
