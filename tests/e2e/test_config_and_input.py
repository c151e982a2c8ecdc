"""Runtime config through the config actor, and bad input that gets its contract error and stores nothing."""

from __future__ import annotations

import asyncio
import time

import boto3
import httpx
import pytest
import redis

from actors.adapters.config_client import ConfigClient
from actors.errors import ServiceCallError
from actors.settings import Settings
from tests.corpus import Case, hostile_cases, oversize_case
from tests.images import distinct_jpegs


def stored_counts(settings: Settings, stream_msgs: int) -> tuple[int, int, int]:
    """(objects in S3, keys in Redis, messages in the work stream): what a refused upload must not change."""
    s3 = boto3.client(
        "s3",
        endpoint_url=settings.s3_server_url,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name=settings.s3_region,
    )
    objects = s3.list_objects_v2(Bucket=settings.s3_bucket).get("KeyCount", 0)
    with redis.Redis.from_url(settings.redis_server_url) as r:
        keys = int(r.dbsize())
    return objects, keys, stream_msgs


async def stream_messages(ops_nc, settings: Settings) -> int:  # type: ignore[no-untyped-def]
    info = await ops_nc.jetstream().stream_info(settings.stream)
    return int(info.state.messages)


async def test_get_config_redacts_secrets(settings: Settings) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.get(f"http://{settings.host}:{settings.config_http_port}/config")
    assert r.status_code == 200
    body = r.text
    assert r.json()["config"]["active_model"] == "efficientnet_lite0"
    for secret in (settings.redis_password, settings.s3_secret_key, settings.nats_password("gateway")):
        assert secret not in body


async def test_invalid_config_is_refused_and_a_valid_change_applies_without_restart(
    client: httpx.AsyncClient, ops_nc
) -> None:
    config = ConfigClient(ops_nc)
    with pytest.raises(ServiceCallError) as refused:
        await config.set("max_upload_bytes", -5)
    assert refused.value.code == "400" and "max_upload_bytes" in refused.value.description
    with pytest.raises(ServiceCallError):
        await config.set("no_such_key", 1)

    before = (await config.get()).max_upload_bytes
    image = distinct_jpegs(1, size=(640, 480), seed=7, quality=95)[0]
    assert len(image) > 2000
    try:
        await config.set("max_upload_bytes", 2000)
        deadline = time.monotonic() + 15  # the gateway follows the Config DB: the change arrives at once
        while True:
            r = await client.post("/images/upload", files={"file": ("big.jpg", image, "image/jpeg")})
            if r.status_code == 413:
                break
            assert time.monotonic() < deadline, f"limit not applied: {r.status_code}"
            await asyncio.sleep(0.5)
        assert r.json()["error"]["code"] == "too_large"
    finally:
        await config.set("max_upload_bytes", before)
        # for the tests after this one: wait until the gateway has the old limit again (its watch brings it);
        # the probe is not an image, so it is refused after the size check and stores nothing
        probe, deadline = {"file": ("probe.jpg", bytes(len(image)), "image/jpeg")}, time.monotonic() + 15
        while (await client.post("/images/upload", files=probe)).status_code == 413:
            assert time.monotonic() < deadline, "the gateway kept the lowered upload limit"
            await asyncio.sleep(0.05)


def _cases() -> list[Case]:
    return [*hostile_cases(), oversize_case(25 * 1024 * 1024)]


async def test_bad_input_gets_its_contract_error_and_stores_nothing(
    client: httpx.AsyncClient, settings: Settings, ops_nc
) -> None:
    await asyncio.sleep(1)  # let earlier tests' work settle so the counts are stable
    before = stored_counts(settings, await stream_messages(ops_nc, settings))
    for case in _cases():
        files = {"file": (case.filename, case.data, case.content_type)}
        data = {"metadata": case.metadata} if case.metadata is not None else {}
        r = await client.post("/images/upload", files=files, data=data)
        assert r.status_code == case.expect_status, (case.name, r.status_code, r.text[:200])
        assert r.json()["error"]["code"] == case.expect_code, case.name
        assert r.json()["error"]["message"], case.name
    missing = await client.post("/images/upload", data={"metadata": "{}"})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_field"
    after = stored_counts(settings, await stream_messages(ops_nc, settings))
    assert after == before, "a refused upload left something behind (objects, redis keys, jobs)"
