"""What the tests that run against real servers share: the private stack, the ``ops`` NATS connection, uploads,
and waits on conditions the tests can observe.

The fixtures built on these live in the conftest files: each folder's session fixture starts its stack with
:func:`running_stack`; ``tests/conftest.py`` gives every folder the ``ops_nc`` fixture on that stack. Waits
poll an observable condition with a deadline: a test never sleeps for "long enough".
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import boto3
import httpx
import nats.errors
from botocore.config import Config
from nats.aio.client import Client
from nats.js.api import ConsumerInfo

from actors import contract
from actors.runtime import connect_nats
from actors.settings import Settings
from ops.stack.ports import private_settings
from ops.stack.prepare import prepare
from ops.stack.supervisor import Stack

TERMINAL = frozenset({"done", "error"})


# --- the stack --------------------------------------------------------------------------------------------
def test_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for a private stack: every port free, every file under ``data_dir``."""
    return private_settings(data_dir, **overrides)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@contextmanager
def running_stack(
    data_dir: Path,
    *,
    only: tuple[str, ...] | None = None,
    export_models: bool = True,
    timeout_s: float = 240,
    **overrides: object,
) -> Iterator[Stack]:
    """A private stack under its own supervisord, started by the same code as ``make run``; stopped on exit.

    What differs between the folders' stacks: ``data_dir``, the settings ``overrides`` (``models``,
    ``model_repository``, ``log_level``, ...), ``only`` (a subset of the services; ``None``: all of them) and
    ``export_models`` (``False`` for a stack without Triton: no model export).
    """
    settings = test_settings(data_dir, **overrides)
    if export_models:
        prepare(settings)
    stack = Stack(settings, only=only)
    stack.launch_supervisord()
    try:
        stack.start(timeout_s=timeout_s)
        yield stack
    finally:
        stack.shutdown()


def s3_client(settings: Settings) -> Any:
    """A plain (sync) S3 client on the stack's bucket, for tests that look behind the mesh's back."""
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_server_url,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name=settings.s3_region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


@asynccontextmanager
async def ops_connection(settings: Settings, name: str = "tests-ops") -> AsyncIterator[Client]:
    """A NATS connection as the ``ops`` user (every permission), closed on exit."""
    nc = await connect_nats(settings, "ops", name=name)
    try:
        yield nc
    finally:
        await nc.close()


# --- waiting ----------------------------------------------------------------------------------------------
async def wait_until(
    what: str, check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 30.0, every_s: float = 0.1
) -> None:
    """Poll ``check`` (a function or a coroutine function) until it is true; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s}s"
        await asyncio.sleep(every_s)


async def wait_consumer_idle(nc: Client, stream: str, consumer: str, timeout_s: float = 90.0) -> ConsumerInfo:
    """Until a JetStream consumer has delivered every message it matches and each was acknowledged.

    From then on nothing can be redelivered: a message is redelivered only while unacknowledged. This is the
    signal that comes first when a test must show that something does NOT happen after processing.
    """
    js = nc.jetstream()
    deadline = time.monotonic() + timeout_s
    while True:
        info = await js.consumer_info(stream, consumer)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return info
        assert time.monotonic() < deadline, (
            f"consumer {stream}/{consumer} not idle after {timeout_s}s: {info}"
        )
        await asyncio.sleep(0.2)


def jobs_service(settings: Settings) -> str:
    """The stack's service that runs the image jobs: the coordinator, or Temporal's worker in its place."""
    return "worker" if settings.workflow_engine == "temporal" else "coordinator"


async def wait_jobs_idle(nc: Client, settings: Settings, timeout_s: float = 90.0) -> None:
    """Until every queued job has run to its end: the coordinator's consumer is idle (JetStream), or no image
    workflow is open (Temporal)."""
    if settings.workflow_engine != "temporal":
        await wait_consumer_idle(nc, settings.stream, settings.consumer, timeout_s)
        return
    from temporalio.client import Client as TemporalClient

    temporal = await TemporalClient.connect(
        settings.temporal_server_address, namespace=settings.temporal_namespace
    )
    query = f"ExecutionStatus='Running' AND TaskQueue='{settings.temporal_task_queue}'"
    await wait_until("no image workflow open", lambda: _no_open_workflows(temporal, query), timeout_s)


async def jobs_of(nc: Client, settings: Settings, image_id: str) -> int:
    """How many jobs the engine took for an image: the work stream's messages for it (JetStream), or its
    workflow runs (Temporal)."""
    if settings.workflow_engine == "temporal":
        from temporalio.client import Client as TemporalClient

        temporal = await TemporalClient.connect(
            settings.temporal_server_address, namespace=settings.temporal_namespace
        )
        return len([w async for w in temporal.list_workflows(f"WorkflowId='image-{image_id}'")])
    sub = await nc.jetstream().subscribe(contract.JOBS_SUBJECT, ordered_consumer=True)
    jobs = 0
    try:
        while True:
            msg = await sub.next_msg(timeout=1)
            jobs += contract.decode(msg.data, contract.ProcessJob).image_id == image_id
    except nats.errors.TimeoutError:  # the stream's end
        pass
    finally:
        await sub.unsubscribe()
    return jobs


async def _no_open_workflows(temporal: Any, query: str) -> bool:
    return int((await temporal.count_workflows(query)).count) == 0


async def wait_status(
    client: httpx.AsyncClient,
    image_ids: Collection[str],
    statuses: Collection[str],
    timeout_s: float = 120,
    *,
    through_outages: bool = False,
    every_s: float = 0.5,
) -> dict[str, dict[str, Any]]:
    """Poll ``GET /images/{id}`` until every image is in one of ``statuses``; returns the last records.

    ``through_outages``: a gateway that does not answer, or answers other than 200, is asked again until the
    deadline (chaos tests kill it); otherwise any answer but 200 fails the test at once.
    """
    deadline = time.monotonic() + timeout_s
    records: dict[str, dict[str, Any]] = {}
    pending = list(dict.fromkeys(image_ids))
    while pending:
        still = []
        for image_id in pending:
            try:
                r = await client.get(f"/images/{image_id}")
            except httpx.TransportError:
                if not through_outages:
                    raise
                still.append(image_id)
                continue
            if r.status_code != 200:
                assert through_outages, f"GET /images/{image_id}: {r.status_code} {r.text[:200]}"
                still.append(image_id)
                continue
            records[image_id] = r.json()
            if records[image_id]["status"] not in statuses:
                still.append(image_id)
        pending = still
        if pending:
            if time.monotonic() > deadline:
                sample = {i: records.get(i, {}).get("status") for i in pending[:5]}
                raise AssertionError(
                    f"{len(pending)} images not in {set(statuses)} after {timeout_s}s: {sample}"
                )
            await asyncio.sleep(every_s)
    return records


async def wait_terminal(client: httpx.AsyncClient, ids: Collection[str], timeout_s: float) -> dict[str, dict]:
    """Until every image is done or error, asking again while the gateway itself is unavailable."""
    return await wait_status(client, ids, TERMINAL, timeout_s, through_outages=True)


# --- uploads ----------------------------------------------------------------------------------------------
async def upload(
    client: httpx.AsyncClient,
    data: bytes,
    name: str = "x.jpg",
    metadata: Mapping[str, Any] | str | None = None,
    *,
    content_type: str = "image/jpeg",
    **form: str,
) -> httpx.Response:
    """``POST /images/upload`` as a browser form: the file, ``metadata`` (a dict is sent as JSON, a string as
    it is, an empty one not at all) and any other form fields. Returns the response, whatever its status."""
    fields = dict(form)
    if metadata:
        fields["metadata"] = metadata if isinstance(metadata, str) else json.dumps(metadata)
    return await client.post("/images/upload", files={"file": (name, data, content_type)}, data=fields)


async def upload_id(
    client: httpx.AsyncClient,
    data: bytes,
    name: str = "x.jpg",
    metadata: Mapping[str, Any] | str | None = None,
    *,
    expect: Collection[int] = (202,),
    **form: str,
) -> str:
    """:func:`upload`, asserting the status is in ``expect`` (202: new; add 200 to accept a duplicate);
    returns the image id."""
    r = await upload(client, data, name, metadata, **form)
    assert r.status_code in expect, f"{r.status_code}: {r.text[:300]}"
    return str(r.json()["image_id"])


async def upload_with_retry(
    client: httpx.AsyncClient, data: bytes, *, deadline_s: float = 120, name: str = "x.jpg"
) -> tuple[str, list[int]]:
    """Upload like a well-behaved client: retry 503s and connection errors; returns (image_id, statuses)."""
    statuses: list[int] = []
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            r = await upload(client, data, name)
            statuses.append(r.status_code)
            if r.status_code in (200, 202):
                return str(r.json()["image_id"]), statuses
            assert r.status_code == 503, f"unexpected {r.status_code}: {r.text[:200]}"
        except httpx.TransportError:
            statuses.append(0)
        assert time.monotonic() < deadline, f"upload never accepted: {statuses[-10:]}"
        await asyncio.sleep(0.2 + random.random() * 0.3)
