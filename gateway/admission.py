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

* the object store: the bucket's bytes at or over ``storage_refuse_at`` of ``object_store_max_bytes`` (0: no
  limit, and nothing is measured) -> ``507 insufficient_storage`` naming ``object_store``: the originals and
  what the pipeline derives from them live there.

The first three are one request each (consumer info and account info on NATS, ``INFO memory`` on Redis), asked
at once on every upload; without NATS the upload is a 503 at once, as it would be without this check. S3 has no
"bytes used" call, so the object store's bytes are a listing of the whole bucket, kept and listed again at most
every ``object_store_usage_refresh_s`` (``StoreUsage``), plus the bytes of the uploads this gateway admitted
since that listing began; a failed listing is a 503 (``RetryableError``), and the next upload lists again. The
limits are exact for one gateway; several gateways each check the same numbers, so a burst can pass a limit by
what they accept between two checks (for the object store: between two of its listings). ``usage`` is what
``/status`` shows and the gauges export.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError
from prometheus_client import Gauge

from actors.adapters.object_store import ObjectStore
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


def _retrieved(task: asyncio.Task[None]) -> None:
    """Mark a listing's failure as seen: the check that waited for it (if not cancelled) raised it already."""
    if not task.cancelled():
        task.exception()


class StoreUsage:
    """The object store's bytes, without listing the whole bucket on every upload.

    ``measure`` lists the bucket (``ObjectStore.total_bytes``); its total is kept and listed again at most every
    ``refresh_s`` after the last listing ended, one listing at a time: the check that finds the figure stale
    starts the listing and waits for it, concurrent checks use the kept figure meanwhile (or, before the first
    listing, wait for the same one). Bytes ``admit``-ted since the kept listing began are added to it, so a burst
    through this gateway counts at once; other gateways' uploads (and what the pipeline derives) count from the
    next listing. A failed listing is the waiting check's ``RetryableError``, and the next check lists again.
    With ``limit`` 0 nothing is measured: the usage is 0 of 0."""

    def __init__(
        self,
        measure: Callable[[], Awaitable[int]] | None,
        limit: int,
        refresh_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit and measure is None:
            raise ValueError("object_store_max_bytes needs the object store to measure")
        self._measure, self.limit, self._refresh_s, self._clock = measure, limit, refresh_s, clock
        self._listed: int | None = None  # the last listing's total
        self._ended = 0.0  # when it ended (``clock``)
        self._admitted = 0  # bytes admitted by this gateway, ever
        self._mark = 0  # ``_admitted`` when the last listing began
        self._flight: asyncio.Task[None] | None = None

    def admit(self, size: int) -> None:
        """Count an upload's bytes as stored, until a listing that began after it counts them."""
        self._admitted += size

    def current(self) -> Usage:
        """The kept figure with the bytes admitted since its listing began (no listing)."""
        if not self.limit:
            return Usage(0, 0, "bytes")
        return Usage((self._listed or 0) + self._admitted - self._mark, self.limit, "bytes")

    async def usage(self) -> Usage:
        """``current``, listing the bucket first when the kept figure is stale (see the class docstring)."""
        if not self.limit:
            return Usage(0, 0, "bytes")
        flight = self._flight
        if flight is None and (self._listed is None or self._clock() - self._ended >= self._refresh_s):
            flight = self._flight = asyncio.create_task(self._list(self._admitted), name="object-store-usage")
            flight.add_done_callback(_retrieved)
            await asyncio.shield(flight)  # a cancelled upload does not cancel the listing the others share
        elif flight is not None and self._listed is None:
            await asyncio.shield(flight)  # nothing kept yet: wait for the first listing
        return self.current()

    async def _list(self, mark: int) -> None:
        """List the bucket; ``mark``: ``_admitted`` as the listing began (what it may not have seen is after)."""
        assert self._measure is not None
        try:
            total = await self._measure()
        finally:
            self._flight = None
        self._listed, self._ended, self._mark = total, self._clock(), mark


class Admission:
    """The checks of the module docstring, over the gateway's NATS connection, a Redis client (its ACL user
    needs ``INFO``) and, when ``object_store_max_bytes`` is set, the object store (its S3 identity needs
    ``List`` on the whole bucket)."""

    def __init__(
        self, nc: Client, redis: aioredis.Redis, settings: Settings, objects: ObjectStore | None = None
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._redis = redis
        self._redis_max_bytes = settings.redis_max_bytes
        self._stream = settings.stream
        self._consumer = settings.consumer
        self._max_bytes = settings.jetstream_max_bytes
        self._refuse_at = settings.storage_refuse_at
        store_limit = int(settings.object_store_max_bytes * settings.storage_refuse_at)
        self.object_store = StoreUsage(
            objects.total_bytes if objects is not None else None,
            max(1, store_limit) if settings.object_store_max_bytes else 0,
            settings.object_store_usage_refresh_s,
        )

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
        """Every resource, for ``/status`` and the gauges (``RetryableError`` when NATS, Redis or a listing of
        the object store fails). Without ``object_store_max_bytes`` the object store is 0 of 0, not listed."""
        if not self._nc.is_connected:
            raise RetryableError("job queue unavailable: not connected to NATS")
        try:
            backlog, store, memory, objects = await asyncio.gather(
                self.backlog(cfg), self.jetstream(), self.redis_memory(), self.object_store.usage()
            )
        except (TimeoutError, OSError, NatsError) as e:
            raise RetryableError(f"JetStream did not answer: {e}") from e
        found = {"backlog": backlog, "jetstream": store, "redis": memory, "object_store": objects}
        for name, u in found.items():
            RESOURCE_USED.labels(name).set(u.used)
            RESOURCE_LIMIT.labels(name).set(u.limit)
        return found

    async def check(self, cfg: MeshConfig, size: int = 0) -> None:
        """Refuse (``ApiError`` 503 or 507) when the mesh cannot take an upload now; nothing is stored yet.
        Else the upload's ``size`` bytes count as in the object store until its next listing."""
        found = await self.usage(cfg)
        # the object store again, with what was admitted while NATS and Redis answered (no wait from here on)
        found["object_store"] = self.object_store.current()
        for name, what in (
            ("jetstream", "the job store"),
            ("redis", "the record and vector store"),
            ("object_store", "the image store"),
        ):
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
        self.object_store.admit(size)
