"""Upload intents in Redis, as both their writer (the gateway) and the reconciler see them.

An upload notes ``object_key -> gateway instance`` before it stores the object and removes the note once the
record exists (``gateway/intents.py`` owns that protocol and the gateway's own sweep). Each gateway keeps a
liveness key with a short TTL. Keys (``P`` is ``settings.redis_prefix``):

  ``P:upload_intents``       hash: object key -> the instance of the gateway uploading it
  ``P:gateway:<instance>``   a live gateway's heartbeat (expires ``ALIVE_TTL_S`` after its last beat)

This module holds what both sides share: the key names, the pure rules, and ``IntentTable``, the reconciler's
bounded view of the hash (``HSCAN`` pages, which owners are alive, settling one intent). Redis outages are
``RetryableError``.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping

import redis.asyncio as aioredis

from actors.adapters.redis_errors import redis_errors

ALIVE_TTL_S = 6  # a dead gateway's uploads are settled this long after its last heartbeat


def intents_key(prefix: str) -> str:
    return f"{prefix}:upload_intents"


def alive_key(prefix: str, instance: str) -> str:
    return f"{prefix}:gateway:{instance}"


def dead_intents(intents: Mapping[str, str], me: str, alive: Container[str]) -> list[str]:
    """The object keys of ``intents`` (``object_key -> instance``) left by dead gateways: neither this one
    (``me``) nor one in ``alive``. A live gateway's intents are never returned, however old."""
    return [key for key, owner in intents.items() if owner != me and owner not in alive]


def image_id_of(object_key: str) -> str:
    """The image id an object key was made for (``actors.adapters.object_store.object_key``)."""
    return object_key.rsplit("/", 1)[-1]


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class IntentTable:
    """The intents hash read in bounded pages, the owners' liveness, and settling an intent (the caller's
    client: it is not closed here)."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis, self._prefix = redis, prefix
        self._hash = intents_key(prefix)

    async def page(self, cursor: int, count: int) -> tuple[int, dict[str, str]]:
        """One ``HSCAN`` step: the next cursor (0: the walk is complete) and ``{object_key: owner}``."""
        with redis_errors("intents page"):
            nxt, raw = await self._redis.hscan(self._hash, cursor, count=count)
        pairs = raw if isinstance(raw, dict) else {}  # redis-py's HSCAN reply: (cursor, {field: value})
        return int(nxt), {_text(k): _text(v) for k, v in pairs.items()}

    async def owners(self, keys: Iterable[str]) -> dict[str, str]:
        """The owners of the intents noted for these object keys (keys without an intent are left out)."""
        wanted = list(keys)
        if not wanted:
            return {}
        with redis_errors("intents owners"):
            raw = await self._redis.hmget(self._hash, wanted)
        return {k: _text(v) for k, v in zip(wanted, raw, strict=True) if v is not None}

    async def alive(self, owners: Iterable[str]) -> set[str]:
        """Which of these gateway instances still beat (their liveness key has not expired)."""
        found = sorted(set(owners))
        if not found:
            return set()
        with redis_errors("intents alive"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for owner in found:
                    pipe.exists(alive_key(self._prefix, owner))
                flags = await pipe.execute()
        return {o for o, n in zip(found, flags, strict=True) if n}

    async def forget(self, object_key: str) -> None:
        """Drop the intent (its object is recorded, or was deleted)."""
        with redis_errors("intents forget"):
            await self._redis.hdel(self._hash, object_key)
