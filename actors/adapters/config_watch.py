"""One NATS KV watch on the Config DB bucket, turned into ``MeshConfig`` documents: ``ConfigWatch.run``.

The watch is an ordered consumer on the bucket's stream (``kv.watchall``, last value per key). ``run`` hands
its callback the current document (every key's last value; a missing or invalid key at its default, with the
same rules the config actor applies: ``actors.config_rules``), then the whole document again after each change.
It returns when the NATS connection has reconnected (the server may have lost the consumer: the caller opens a
fresh watch, whose first document covers whatever changed meanwhile) and raises ``RetryableError`` when the
watch cannot be opened or its first document does not arrive in time. ``ConfigClient`` owns the retries.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.kv import KV_DEL, KV_PURGE

from actors.config_rules import FIELDS, assemble_entries
from actors.contract import MeshConfig
from actors.errors import RetryableError

log = structlog.get_logger("config_client")

CHECK_S = 0.5  # how often a quiet watch looks whether its connection has reconnected (no network: a counter)
INACTIVE_S = 60.0  # the server drops a watch's consumer this long after its client went away


class ConfigWatch:
    """Watches bucket ``bucket`` over ``nc``; ``defaults`` stand in for missing or invalid keys."""

    def __init__(self, nc: Client, bucket: str, defaults: MeshConfig, timeout_s: float) -> None:
        self._nc = nc
        self._bucket = bucket
        self._defaults = defaults
        self._timeout_s = timeout_s
        self._reported: set[tuple[str, int]] = set()  # bad (key, revision)s logged already, across watches

    async def run(self, on_config: Callable[[MeshConfig], None]) -> None:
        """Call ``on_config`` with the current document, then after every change, until a reconnect."""
        reconnects = self._nc.stats["reconnects"]  # before opening: a reconnect meanwhile reopens at once
        try:
            kv = await self._nc.jetstream(timeout=self._timeout_s).key_value(self._bucket)
            watcher = await kv.watchall(inactive_threshold=INACTIVE_S)
        except NatsError as e:
            raise RetryableError(f"cannot watch config bucket {self._bucket!r}: {e!r}") from e
        try:
            await self._follow(watcher, reconnects, on_config)
        finally:
            with contextlib.suppress(NatsError):  # closed or already gone: nothing left to stop
                await watcher.stop()

    async def _follow(self, watcher: Any, reconnects: int, on_config: Callable[[MeshConfig], None]) -> None:
        entries: dict[str, tuple[bytes, int]] = {}  # key -> (raw value, revision)
        deadline = time.monotonic() + self._timeout_s  # for the first document
        live = False  # the first document is out: every later entry is a change
        while True:
            try:
                entry = await watcher.updates(timeout=CHECK_S)
            except NatsTimeoutError:
                if self._nc.stats["reconnects"] != reconnects:
                    log.info("config.watch_reopen", reason="nats reconnected")
                    return
                if not live and time.monotonic() > deadline:
                    raise RetryableError(
                        f"config bucket {self._bucket!r}: no first document in {self._timeout_s}s"
                    ) from None
                continue
            if entry is None:  # the end of the current values: from here on, changes
                live = True
            elif entry.key not in FIELDS:
                continue  # not one of the mesh's keys (an operator's note): nothing changed
            elif entry.operation in (KV_DEL, KV_PURGE):
                entries.pop(entry.key, None)
            else:
                entries[entry.key] = (entry.value or b"", entry.revision or 0)
            if live:
                on_config(self._assemble(entries))

    def _assemble(self, entries: dict[str, tuple[bytes, int]]) -> MeshConfig:
        cfg, problems = assemble_entries(entries, self._defaults, self._reported)
        for p in problems:
            log.warning("config.invalid_stored_value", key=p.key, reason=p.reason, using="default")
        return cfg
