"""Upload intents: no object outlives a gateway that died between storing it and recording it.

An upload stores its object before it writes the record (gateway/upload.py says why). A gateway killed between
the two would leave an object nothing refers to. So each gateway process
- notes ``object_key -> instance`` in a Redis hash before the put, and removes it once the record exists (or
  the upload was rolled back);
- keeps a liveness key ``P:gateway:<instance>`` with a short TTL;
- every few seconds sweeps the intents of instances whose liveness key expired: an object without a record is
  deleted, and the intent is dropped.
A live gateway's in-flight uploads are never touched, however slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from actors.adapters.object_store import ObjectStore
from actors.adapters.workflow_store import WorkflowStore
from actors.errors import RetryableError

log = structlog.get_logger("gateway.intents")

ALIVE_TTL_S = 6  # a dead gateway's uploads are settled this long after its last heartbeat
SWEEP_EVERY_S = 2.0


class UploadIntents:
    def __init__(self, url: str, prefix: str) -> None:
        self.instance = uuid.uuid4().hex
        self._redis: aioredis.Redis = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
        self._hash = f"{prefix}:upload_intents"
        self._alive = f"{prefix}:gateway:"

    async def close(self) -> None:
        await self._redis.aclose()

    async def begin(self, object_key: str) -> None:
        """Before the object is stored: if this process dies now, a sweep removes the object."""
        try:
            await self._redis.hset(self._hash, object_key, self.instance)
        except RedisError as e:
            raise RetryableError(f"workflow store unavailable: {e}") from e

    async def end(self, object_key: str) -> None:
        """The record exists (or the upload was undone): the object is no longer at risk."""
        with contextlib.suppress(RedisError):
            await self._redis.hdel(self._hash, object_key)

    async def run(self, store: WorkflowStore, objects: ObjectStore) -> None:
        """Heartbeat and sweep forever (a task of the gateway's lifespan)."""
        while True:
            try:
                await self._redis.set(self._alive + self.instance, b"1", ex=ALIVE_TTL_S)
                await self.sweep(store, objects)
            except (RedisError, RetryableError) as e:  # Redis or S3 down: try again next round
                log.info("upload.sweep_deferred", error=str(e))
            except Exception:  # never let the sweeper die silently
                log.exception("upload.sweep_failed")
            await asyncio.sleep(SWEEP_EVERY_S)

    async def sweep(self, store: WorkflowStore, objects: ObjectStore) -> int:
        """Delete the unrecorded objects of dead gateways; returns how many intents were settled."""
        settled = 0
        for raw_key, raw_owner in (await self._redis.hgetall(self._hash)).items():
            key, owner = _text(raw_key), _text(raw_owner)
            if owner == self.instance or await self._redis.exists(self._alive + owner):
                continue
            image_id = key.rsplit("/", 1)[-1]
            if await store.get(image_id) is None:
                await objects.delete(key)
                log.info("upload.orphan_removed", object_key=key, dead_gateway=owner)
            await self._redis.hdel(self._hash, key)
            settled += 1
        return settled


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
