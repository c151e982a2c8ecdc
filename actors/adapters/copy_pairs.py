"""Verified copy pairs and the copy checker's queue, in Redis (``actors/copy_check.py`` fills them, the gateway's
duplicates routes read them).

Keys (``P`` is ``settings.redis_prefix``):
  ``P:copies:<id>``  hash: every image the checker compared with ``<id>`` -> ``1`` (a copy) or ``0`` (looked
                     alike, shares no region); written both ways, so a pair is verified once
  ``P:copyq``        sorted set: images waiting for their check, scored by when they were queued (the lag);
                     a checker's claim moves its image's score past a lease, so an image whose checker died is
                     taken again once the lease ends (nothing is lost to a kill), and ``finish`` removes it
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import redis.asyncio as aioredis

from actors.adapters.redis_errors import redis_errors

LEASE_S = 30.0  # a claimed image is hidden this long; a checker finishes one in milliseconds to seconds

# Claim up to ARGV[3] images whose score is due (<= now): each is hidden until now + lease (atomic: two checkers
# never claim the same image). Returns [member, score, ...] with the scores they were queued at.
_CLAIM = """
local now, lease, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, n)
for i = 1, #due, 2 do
  redis.call('ZADD', KEYS[1], now + lease, due[i])
end
return due
"""


class CopyPairs:
    """The pair verdicts and the queue, over the caller's Redis client (its ACL user must have the keys)."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._r = client
        self.prefix = prefix
        self.queue_key = f"{prefix}:copyq"
        self._claim = client.register_script(_CLAIM)

    def _key(self, image_id: str) -> str:
        return f"{self.prefix}:copies:{image_id}"

    # --- the queue -------------------------------------------------------------------------------------
    async def enqueue(self, image_ids: Iterable[str], at: float | None = None) -> int:
        """Queue images for a check (an image already queued keeps its place); how many were added."""
        ids = list(image_ids)
        if not ids:
            return 0
        when = time.time() if at is None else at
        with redis_errors("copy queue"):
            added = await self._r.zadd(self.queue_key, dict.fromkeys(ids, when), nx=True)
        return int(added or 0)

    async def take(self, n: int, lease_s: float = LEASE_S) -> list[tuple[str, float]]:
        """Claim up to ``n`` due images, oldest first, with the time each was queued. Each stays in the queue,
        hidden for ``lease_s``: ``finish`` removes it; a checker that dies leaves it to the next claim."""
        with redis_errors("copy queue"):
            due = await self._claim(keys=[self.queue_key], args=[time.time(), lease_s, n])
        return [(_text(due[i]), float(due[i + 1])) for i in range(0, len(due), 2)]

    async def finish(self, image_id: str) -> None:
        """The image's check is done (or needs none): out of the queue."""
        with redis_errors("copy queue"):
            await self._r.zrem(self.queue_key, image_id)

    async def backlog(self) -> tuple[int, float | None]:
        """How many images wait (claimed ones included), and since when the oldest due one has waited (None:
        none is due)."""
        with redis_errors("copy queue"):
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.zcard(self.queue_key)
                pipe.zrangebyscore(self.queue_key, "-inf", time.time(), start=0, num=1, withscores=True)
                count, oldest = await pipe.execute()
        return int(count), (float(oldest[0][1]) if oldest else None)

    # --- the verdicts ----------------------------------------------------------------------------------
    async def record(self, image_id: str, verdicts: Mapping[str, bool]) -> None:
        """Write the verdicts of ``image_id`` against each other image, both ways, in one round trip."""
        if not verdicts:
            return
        with redis_errors("copy pairs"):
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(self._key(image_id), mapping={o: int(v) for o, v in verdicts.items()})
                for other, verdict in verdicts.items():
                    pipe.hset(self._key(other), image_id, int(verdict))
                await pipe.execute()

    async def verdicts(self, image_id: str) -> dict[str, bool]:
        """Every other image compared with this one, and whether it is a copy."""
        with redis_errors("copy pairs"):
            raw = await self._r.hgetall(self._key(image_id))
        return {_text(k): _text(v) == "1" for k, v in raw.items()}

    async def copies(self, image_id: str) -> list[str]:
        """The verified copies of an image, sorted."""
        return sorted(other for other, copy in (await self.verdicts(image_id)).items() if copy)

    async def edges(self, batch: int = 500) -> list[tuple[str, str]]:
        """Every verified copy pair (each once), from a SCAN of the verdicts: O(images compared)."""
        head = f"{self.prefix}:copies:"
        out: list[tuple[str, str]] = []
        with redis_errors("copy pairs"):
            keys = [_text(k) async for k in self._r.scan_iter(match=head + "*", count=batch, _type="hash")]
            for start in range(0, len(keys), batch):
                chunk = keys[start : start + batch]
                async with self._r.pipeline(transaction=False) as pipe:
                    for key in chunk:
                        pipe.hgetall(key)
                    rows = await pipe.execute()
                for key, row in zip(chunk, rows, strict=True):
                    image_id = key[len(head) :]
                    out += [
                        (image_id, o)
                        for k, v in row.items()
                        if _text(v) == "1" and image_id < (o := _text(k))
                    ]
        return out

    async def forget(self, image_id: str) -> None:
        """Remove an image's verdicts (its own and the others' about it) and its place in the queue."""
        with redis_errors("copy pairs"):
            others = [_text(k) for k in await self._r.hkeys(self._key(image_id))]
            async with self._r.pipeline(transaction=True) as pipe:
                for other in others:
                    pipe.hdel(self._key(other), image_id)
                pipe.delete(self._key(image_id))
                pipe.zrem(self.queue_key, image_id)
                await pipe.execute()


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


__all__ = ["CopyPairs"]
