"""A dependency down at upload time: 503, and nothing left that would make a retry look like a duplicate."""

from __future__ import annotations

import asyncio
import time

import httpx

from ops.stack.supervisor import Stack
from tests.helpers import upload, wait_status
from tests.images import distinct_jpegs


async def wait_ready(client: httpx.AsyncClient, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while (await client.get("/ready")).status_code != 200:
        assert time.monotonic() < deadline, "gateway not ready again"
        await asyncio.sleep(0.5)


async def test_upload_while_nats_is_down_is_503_and_retry_is_not_a_duplicate(
    client: httpx.AsyncClient, mesh: Stack
) -> None:
    data = distinct_jpegs(1, seed=9090)[0]
    mesh.stop_service("nats")
    try:
        r = await upload(client, data, "a.jpg")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "unavailable"
        ready = await client.get("/ready")
        assert ready.status_code == 503 and "nats" in ready.json()["failed"]
    finally:
        mesh.start_service("nats")
    await wait_ready(client)

    deadline = time.monotonic() + 30
    while True:  # the gateway's NATS client reconnects on its own
        r = await upload(client, data, "a.jpg")
        if r.status_code != 503 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert r.status_code == 202, r.text  # new, not "duplicate": the refused attempt left nothing behind
    await wait_status(client, [r.json()["image_id"]], {"done"}, timeout_s=90)


async def test_upload_while_s3_is_down_is_503(client: httpx.AsyncClient, mesh: Stack) -> None:
    data = distinct_jpegs(1, seed=9191)[0]
    mesh.stop_service("s3")
    try:
        r = await upload(client, data, "a.jpg")
        assert r.status_code == 503, r.text
        ready = await client.get("/ready")
        assert ready.status_code == 503 and "s3" in ready.json()["failed"]
    finally:
        mesh.start_service("s3")
    await wait_ready(client)
    r = await upload(client, data, "a.jpg")
    assert r.status_code == 202, r.text
    await wait_status(client, [r.json()["image_id"]], {"done"}, timeout_s=90)
