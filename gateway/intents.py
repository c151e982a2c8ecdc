"""Upload intents: no object outlives a gateway that died between storing it and recording it.

An upload stores its object before it writes the record (gateway/upload.py says why). A gateway killed between
the two would leave an object nothing refers to. So each gateway process
- notes ``object_key -> instance`` in a Redis hash before the put, and removes it once the record exists (or
  the upload was rolled back);
- keeps a liveness key ``P:gateway:<instance>`` with a short TTL;
- every few seconds sweeps the intents of instances whose liveness key expired: an object without a record is
  deleted, and the intent is dropped.
A live gateway's in-flight uploads are never touched, however slow. The key names and the pure rules are
shared with the coordinator's reconciler (``actors/adapters/upload_intents.py``), which settles the intents left
when no gateway runs to sweep them, and intents whose upload finished but whose removal was lost.
"""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from actors.adapters.object_store import ObjectStore
from actors.adapters.redis_client import redis_client
from actors.adapters.redis_errors import redis_errors
from actors.adapters.upload_intents import ALIVE_TTL_S, alive_key, dead_intents, image_id_of, intents_key
from actors.adapters.workflow_store import WorkflowStore
from actors.errors import RetryableError

log = structlog.get_logger("gateway.intents")

SWEEP_EVERY_S = 2.0
__all__ = ["ALIVE_TTL_S", "SWEEP_EVERY_S", "UploadIntents", "dead_intents", "image_id_of"]


class UploadIntents:
    """This gateway's upload intents in Redis, its heartbeat, and the sweep of dead gateways' intents."""

    def __init__(self, url: str, prefix: str, *, redis: aioredis.Redis | None = None) -> None:
        self.instance = uuid.uuid4().hex
        self._redis: aioredis.Redis = redis or redis_client(url)
        self._hash = intents_key(prefix)
        self._unended: set[str] = set()  # intents whose removal found Redis down: removed by ``run``
        self._alive = alive_key(prefix, "")

    async def close(self) -> None:
        await self._redis.aclose()

    async def begin(self, object_key: str) -> None:
        """Before the object is stored: if this process dies now, a sweep removes the object."""
        with redis_errors("upload intent", permission_is_outage=True):
            await self._redis.hset(self._hash, object_key, self.instance)

    async def end(self, object_key: str) -> None:
        """The record exists (or the upload was undone): the object is no longer at risk. If Redis does not
        answer, the intent is removed by a later round of ``run`` (a live gateway's intents are never swept)."""
        try:
            await self._redis.hdel(self._hash, object_key)
        except RedisError:
            self._unended.add(object_key)

    async def _end_unended(self) -> None:
        """Remove the intents whose ``end`` found Redis down."""
        if self._unended:
            keys = sorted(self._unended)
            await self._redis.hdel(self._hash, *keys)
            self._unended.difference_update(keys)

    async def run(self, store: WorkflowStore, objects: ObjectStore) -> None:
        """Heartbeat and sweep forever (a task of the gateway's lifespan)."""
        while True:
            try:
                await self._redis.set(self._alive + self.instance, b"1", ex=ALIVE_TTL_S)
                await self._end_unended()
                await self.sweep(store, objects)
            except (RedisError, RetryableError) as e:  # Redis or S3 down: try again next round
                log.info("upload.sweep_deferred", error=str(e))
            except Exception:  # broad on purpose: never let the sweeper die silently
                log.exception("upload.sweep_failed")
            await asyncio.sleep(SWEEP_EVERY_S)

    async def sweep(self, store: WorkflowStore, objects: ObjectStore) -> int:
        """Delete the unrecorded objects of dead gateways; returns how many intents were settled."""
        raw = await self._redis.hgetall(self._hash)
        intents = {_text(k): _text(v) for k, v in raw.items()}
        alive = {
            owner
            for owner in set(intents.values()) - {self.instance}
            if await self._redis.exists(self._alive + owner)
        }
        dead = dead_intents(intents, self.instance, alive)
        for key in dead:
            if await store.get(image_id_of(key)) is None:
                await objects.delete(key)
                log.info("upload.orphan_removed", object_key=key, dead_gateway=intents[key])
            await self._redis.hdel(self._hash, key)
        return len(dead)


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
