"""Small in-memory fakes of the gateway's adapters, for unit tests that start no server.

Each fake keeps only what the code under test reads or writes, records the calls the tests assert on, and can
be told to fail the way the real adapter does (``RetryableError`` for a dependency that is down).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from actors.adapters.job_queue import Published
from actors.contract import ImageEvent, ImageRecord, ProcessJob
from actors.errors import RetryableError


def down(what: str) -> RetryableError:
    return RetryableError(f"{what} unavailable: fake outage")


@dataclass
class FakeWorkflowStore:
    """``WorkflowStore``: records by id and sha256 claims; ``create`` claims atomically like the Lua script."""

    records: dict[str, ImageRecord] = field(default_factory=dict)
    claims: dict[str, str] = field(default_factory=dict)
    fail_create: bool = False
    fail_delete: bool = False
    before_create: Callable[[], None] | None = (
        None  # runs inside create: a concurrent upload gets there first
    )
    deleted: list[str] = field(default_factory=list)

    def add(self, rec: ImageRecord) -> None:
        self.records[rec.image_id] = rec
        self.claims[rec.sha256] = rec.image_id

    async def create(self, rec: ImageRecord) -> str | None:
        if self.before_create is not None:
            self.before_create()
        if self.fail_create:
            raise down("workflow store")
        owner = self.claims.get(rec.sha256)
        if owner is not None and owner in self.records:
            return owner
        self.add(rec)
        return None

    async def owner_of(self, sha256: str) -> str | None:
        return self.claims.get(sha256)

    async def get(self, image_id: str) -> ImageRecord | None:
        return self.records.get(image_id)

    async def update(self, image_id: str, **fields: Any) -> None:
        if image_id in self.records:
            self.records[image_id] = msgspec.structs.replace(self.records[image_id], **fields)

    async def delete(self, image_id: str, sha256: str | None = None) -> None:
        if self.fail_delete:
            raise down("workflow store")
        self.deleted.append(image_id)
        self.records.pop(image_id, None)
        if sha256 and self.claims.get(sha256) == image_id:
            del self.claims[sha256]


@dataclass
class FakeObjectStore:
    """``ObjectStore``: bytes by key."""

    objects: dict[str, bytes] = field(default_factory=dict)
    fail_put: bool = False
    fail_delete: bool = False
    put_keys: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self.put_keys.append(key)
        if self.fail_put:
            raise down("object store")
        self.objects[key] = data

    async def delete(self, key: str) -> None:
        self.deleted.append(key)
        if self.fail_delete:
            raise down("object store")
        self.objects.pop(key, None)


@dataclass
class FakeJobQueue:
    """``JobQueue``: the jobs JetStream acknowledged."""

    published: list[ProcessJob] = field(default_factory=list)
    fail: bool = False

    async def publish(self, job: ProcessJob, *, msg_id: str | None = None) -> Published:
        if self.fail:
            raise down("job queue")
        self.published.append(job)
        return Published(job=job, seq=len(self.published))


@dataclass
class FakeEvents:
    published: list[ImageEvent] = field(default_factory=list)

    async def publish(self, event: ImageEvent) -> None:
        self.published.append(event)


@dataclass
class FakeNats:
    is_connected: bool = True


class FakeRedis:
    """The few Redis commands ``gateway.intents.UploadIntents`` sends: hashes, plain keys (TTL ignored)."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.keys: dict[str, bytes] = {}

    @staticmethod
    def _b(v: Any) -> bytes:
        return v if isinstance(v, bytes) else str(v).encode()

    async def hset(self, name: str, key: str, value: Any) -> int:
        h = self.hashes.setdefault(name, {})
        new = self._b(key) not in h
        h[self._b(key)] = self._b(value)
        return int(new)

    async def hdel(self, name: str, *keys: str) -> int:
        h = self.hashes.get(name, {})
        return sum(h.pop(self._b(k), None) is not None for k in keys)

    async def hgetall(self, name: str) -> dict[bytes, bytes]:
        return dict(self.hashes.get(name, {}))

    async def exists(self, *names: str) -> int:
        return sum(n in self.keys for n in names)

    async def set(self, name: str, value: Any, ex: int | None = None) -> bool:
        self.keys[name] = self._b(value)
        return True

    async def aclose(self) -> None:
        return None
