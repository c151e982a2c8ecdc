"""The Config DB: a NATS KV bucket with one JSON value per ``MeshConfig`` field, owned by the config actor.

``ConfigStore`` creates the bucket when missing (file storage, with history), seeds the absent keys, reads the
whole document (one direct get per key, missing or invalid keys at their defaults) and writes one validated
key with optimistic concurrency. The rules it applies are in ``actors.config_rules``; readers elsewhere in the
mesh follow the bucket with a watch (``actors.adapters.config_client``), never through this class.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import structlog
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from actors.config_rules import FIELDS, apply_change, assemble_entries
from actors.contract import MeshConfig
from actors.errors import RetryableError

log = structlog.get_logger("config")

BUCKET_HISTORY = 10  # enough to see (and restore by hand) the last few changes of each key
SET_ATTEMPTS = 3


class ConfigStore:
    """The Config DB in a NATS KV bucket: one key per ``MeshConfig`` field, JSON values."""

    def __init__(self, kv: KeyValue, defaults: MeshConfig) -> None:
        self.kv = kv
        self.defaults = defaults
        self._write_lock = asyncio.Lock()  # sets in this process validate against each other's result
        self._reported: set[tuple[str, int]] = set()  # (key, revision) of bad stored values already logged

    @classmethod
    async def open(
        cls, js: JetStreamContext, bucket: str, defaults: MeshConfig, replicas: int = 1
    ) -> ConfigStore:
        """The bucket, created (file storage, with history, ``replicas`` copies) when missing."""
        try:
            kv = await js.key_value(bucket)
        except BucketNotFoundError:
            kv = await js.create_key_value(
                KeyValueConfig(
                    bucket=bucket,
                    description="image mesh runtime configuration (config actor)",
                    history=BUCKET_HISTORY,
                    storage=StorageType.FILE,
                    replicas=replicas,
                    direct=True,
                )
            )
            log.info("config.bucket_created", bucket=bucket)
        return cls(kv, defaults)

    async def seed(self) -> list[str]:
        """Write the defaults of the keys that are absent; returns the keys written."""
        seeded = []
        for key, value in msgspec.structs.asdict(self.defaults).items():
            try:
                await self.kv.create(key, msgspec.json.encode(value))
            except KeyWrongLastSequenceError:
                continue  # already set (by an earlier start or an operator): never overwrite
            seeded.append(key)
        return seeded

    async def _entries(self) -> dict[str, tuple[bytes, int]]:
        async def one(key: str) -> tuple[str, bytes | None, int]:
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                return key, None, 0
            return key, entry.value or b"", entry.revision or 0

        try:
            got = await asyncio.gather(*(one(k) for k in FIELDS))
        except NatsError as e:
            raise RetryableError(f"config bucket unavailable: {e!r}") from e
        return {key: (raw, rev) for key, raw, rev in got if raw is not None}

    def _assemble(self, entries: dict[str, tuple[bytes, int]]) -> MeshConfig:
        cfg, problems = assemble_entries(entries, self.defaults, self._reported)
        for p in problems:
            log.warning("config.invalid_stored_value", key=p.key, reason=p.reason, using="default")
        return cfg

    async def read(self) -> MeshConfig:
        """The current configuration (missing or invalid keys at their defaults)."""
        return self._assemble(await self._entries())

    async def set(self, key: str, value: Any) -> MeshConfig:
        """Validate and write one key; the write only lands if nobody changed that key since it was read."""
        async with self._write_lock:
            for _ in range(SET_ATTEMPTS):
                entries = await self._entries()
                cfg = apply_change(self._assemble(entries), key, value)
                data = msgspec.json.encode(getattr(cfg, key))
                revision = entries.get(key, (b"", 0))[1]
                try:
                    if revision:
                        await self.kv.update(key, data, last=revision)
                    else:
                        await self.kv.create(key, data)
                except KeyWrongLastSequenceError:
                    continue  # another writer (an operator, a replica) got there first: validate again
                except NatsError as e:
                    raise RetryableError(f"config bucket unavailable: {e!r}") from e
                log.info("config.set", key=key, value=getattr(cfg, key))
                return cfg
        raise RetryableError(f"config.set {key}: the key kept changing under concurrent writers; try again")
