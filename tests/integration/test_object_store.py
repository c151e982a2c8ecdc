"""actors/adapters/object_store.py against the real S3 server: the signed PUT and aioboto3's reads agree."""

from __future__ import annotations

import os

import httpx
import pytest

from actors.adapters.object_store import ObjectMissing, ObjectStore, object_key
from actors.errors import RetryableError
from actors.settings import Settings
from ops.stack.ports import free_port


async def test_put_get_delete_round_trip(server_settings: Settings) -> None:
    data = os.urandom(300_000)
    key = object_key("ab" + os.urandom(8).hex())
    async with ObjectStore(server_settings) as store:
        await store.put(key, data, "image/png")
        assert await store.exists(key)
        assert await store.get(key) == data
        # what a client of the pre-signed URL gets: the bytes and the content type given to put
        async with httpx.AsyncClient() as http:
            r = await http.get(await store.presigned_url(key))
        assert r.status_code == 200 and r.content == data
        assert r.headers["content-type"] == "image/png"
        await store.put(key, b"replaced", "image/jpeg")  # a PUT of the same key replaces it
        assert await store.get(key) == b"replaced"
        await store.delete(key)
        assert not await store.exists(key)
        with pytest.raises(ObjectMissing):
            await store.get(key)


async def test_put_with_wrong_credentials_is_refused_not_stored(server_settings: Settings) -> None:
    wrong = server_settings.model_copy(update={"s3_secret_key": "not-the-secret"})
    key = object_key("cd" + os.urandom(8).hex())
    async with ObjectStore(wrong) as store:
        with pytest.raises(RetryableError, match="HTTP 403"):
            await store.put(key, b"x" * 1000, "image/jpeg")
    async with ObjectStore(server_settings) as store:
        assert not await store.exists(key)


async def test_put_to_a_dead_endpoint_is_retryable(server_settings: Settings) -> None:
    nowhere = server_settings.model_copy(update={"s3_port": free_port()})
    async with ObjectStore(nowhere, timeout_s=2) as store:
        with pytest.raises(RetryableError, match="object store put failed"):
            await store.put(object_key("ef0123"), b"x", "image/jpeg")
