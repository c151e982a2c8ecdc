"""Admission: an upload the mesh cannot take is refused before anything is stored, and says why.

Three checks run before an upload touches the object store, Redis or JetStream (``gateway/images.py``):

* the backlog: jobs waiting in the work stream for the coordinators (their consumer's pending plus delivered
  and not yet acknowledged) at or over the Config DB's ``max_backlog`` -> ``503 backlog_full`` with
  ``Retry-After``. The coordinators drain it by themselves; the client retries later and is accepted then.
* JetStream's store: the account's stored bytes at or over ``storage_refuse_at`` of its limit (the setting
  ``jetstream_max_bytes``, else the server's own account limit) -> ``507 insufficient_storage`` naming
  ``jetstream``: every accepted upload is a durable job there, so a full store would lose them.
* Redis's memory: ``used_memory`` at or over ``storage_refuse_at`` of its limit (the setting
  ``redis_max_bytes``, else the server's own ``maxmemory``) -> ``507 insufficient_storage`` naming ``redis``:
  the records, their history and the vectors live there, and a Redis at ``maxmemory`` refuses writes.

Each is one request (consumer info and account info on NATS, ``INFO memory`` on Redis), the three asked at
once on every upload; without NATS the upload is a 503 at once, as it would be without this check. The limits
are exact for one gateway; several gateways each check the same numbers, so a burst can pass a limit by what
they accept between two checks. ``usage`` is what ``/status`` shows and the gauges export.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import redis.asyncio as aioredis
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError
from prometheus_client import Gauge

from actors.adapters.redis_errors import redis_errors
from actors.contract import MeshConfig
from actors.errors import RetryableError
from actors.settings import Settings
from gateway.errors import ApiError

BACKLOG_RETRY_AFTER_S = 5  # a full backlog drains at the coordinators' pace: seconds, not milliseconds

RESOURCE_USED = Gauge("mesh_resource_used", "What a refusable resource holds now (jobs, bytes)", ["resource"])
RESOURCE_LIMIT = Gauge(
    "mesh_resource_limit", "Where uploads are refused for the resource (0: no limit)", ["resource"]
)


@dataclass(frozen=True)
class Usage:
    """One resource: what it holds, where uploads are refused (0: no limit), and in what unit."""

    used: int
    limit: int
    unit: str

    @property
    def full(self) -> bool:
        return self.limit > 0 and self.used >= self.limit


class Admission:
    """The checks of the module docstring, over the gateway's NATS connection and a Redis client (its ACL
    user needs ``INFO``)."""

    def __init__(self, nc: Client, redis: aioredis.Redis, settings: Settings) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._redis = redis
        self._redis_max_bytes = settings.redis_max_bytes
        self._stream = settings.stream
        self._consumer = settings.consumer
        self._max_bytes = settings.jetstream_max_bytes
        self._refuse_at = settings.storage_refuse_at

    async def backlog(self, cfg: MeshConfig) -> Usage:
        """Jobs the coordinators have not finished: waiting plus delivered and not yet acknowledged."""
        try:
            info = await self._js.consumer_info(self._stream, self._consumer)
        except NotFoundError:  # no coordinator has made its consumer yet: every job waits in the stream
            stream = await self._js.stream_info(self._stream)
            waiting = int(stream.state.messages)
        else:
            waiting = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        return Usage(waiting, cfg.max_backlog, "jobs")

    async def jetstream(self) -> Usage:
        """The account's stored bytes, refused at ``storage_refuse_at`` of the limit."""
        info = await self._js.account_info()
        limit = self._max_bytes or max(0, int(info.limits.max_storage or 0))
        return Usage(int(info.storage), int(limit * self._refuse_at), "bytes")

    async def redis_memory(self) -> Usage:
        """Redis's ``used_memory``, refused at ``storage_refuse_at`` of the limit."""
        with redis_errors("memory usage"):
            info = await self._redis.info("memory")
        limit = self._redis_max_bytes or int(info.get("maxmemory", 0))
        return Usage(int(info["used_memory"]), int(limit * self._refuse_at), "bytes")

    async def usage(self, cfg: MeshConfig) -> dict[str, Usage]:
        """Every resource, for ``/status`` and the gauges (``RetryableError`` when NATS or Redis fails)."""
        if not self._nc.is_connected:
            raise RetryableError("job queue unavailable: not connected to NATS")
        try:
            backlog, store, memory = await asyncio.gather(
                self.backlog(cfg), self.jetstream(), self.redis_memory()
            )
        except (TimeoutError, OSError, NatsError) as e:
            raise RetryableError(f"JetStream did not answer: {e}") from e
        found = {"backlog": backlog, "jetstream": store, "redis": memory}
        for name, u in found.items():
            RESOURCE_USED.labels(name).set(u.used)
            RESOURCE_LIMIT.labels(name).set(u.limit)
        return found

    async def check(self, cfg: MeshConfig) -> None:
        """Refuse (``ApiError`` 503 or 507) when the mesh cannot take an upload now; nothing is stored yet."""
        found = await self.usage(cfg)
        for name, what in (("jetstream", "the job store"), ("redis", "the record and vector store")):
            store = found[name]
            if store.full:
                raise ApiError(
                    507,
                    "insufficient_storage",
                    f"{name}: {what} holds {store.used} bytes, at its limit of {store.limit}; "
                    "uploads resume when an operator makes room",
                )
        backlog = found["backlog"]
        if backlog.full:
            raise ApiError(
                503,
                "backlog_full",
                f"backlog: {backlog.used} jobs wait for the coordinators (limit {backlog.limit}); retry later",
                headers={"Retry-After": str(BACKLOG_RETRY_AFTER_S)},
            )
