"""The mesh's runtime configuration as the gateway and the actors see it: ``ConfigClient.get()``.

The config actor owns the Config DB (a NATS KV bucket) and answers ``config.get`` / ``config.set``.
Readers ask it through this client, which caches the answer for ``ttl_s`` and, while the config actor is
down, keeps serving the last good value (or the defaults seeded from settings), so an outage of the config
actor never stops the mesh.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from nats.aio.client import Client

from actors import contract
from actors.contract import ConfigGet, ConfigSet, MeshConfig
from actors.errors import RetryableError, ServiceCallError
from actors.rpc import call
from actors.settings import Settings

log = structlog.get_logger("config_client")


def mesh_config_defaults(settings: Settings) -> MeshConfig:
    """The Config DB's seed: ``MeshConfig`` defaults, with the fields settings carry taken from settings."""
    return MeshConfig(
        active_model=settings.default_model,
        max_upload_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_pixels,
    )


class ConfigClient:
    """Cached reader (and writer) of the mesh's configuration over the ``config`` service.

    ``fallback`` is served when the service has never answered; pass ``mesh_config_defaults(settings)`` so
    that a process started while the config actor is down still uses the operator's seeds (``MeshConfig()``
    otherwise).
    """

    def __init__(
        self, nc: Client, ttl_s: float = 2.0, fallback: MeshConfig | None = None, timeout_s: float = 2.0
    ) -> None:
        self._nc = nc
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._value = fallback if fallback is not None else MeshConfig()
        self._fetched_at = float("-inf")  # monotonic time of the last try, good or not
        self._outage = False
        # one refresh at a time: a burst of get() on expiry sends one request, not one per caller
        self._lock = asyncio.Lock()

    @property
    def cached(self) -> MeshConfig:
        """The value ``get()`` would answer without asking (last good, or the fallback)."""
        return self._value

    async def get(self) -> MeshConfig:
        """The current configuration, at most ``ttl_s`` old while the config service answers."""
        if not self._expired():
            return self._value
        async with self._lock:
            if self._expired():  # another caller may have refreshed while this one waited
                await self._refresh()
            return self._value

    async def set(self, key: str, value: Any) -> MeshConfig:
        """Set one field in the Config DB and return the new configuration.

        Raises ``ServiceCallError`` (code ``"400"``, description naming the key and the reason) when the
        config actor refuses the value, and ``RetryableError`` when it does not answer.
        """
        cfg = await call(
            self._nc, contract.CONFIG_SET, ConfigSet(key=key, value=value), MeshConfig, self._timeout_s
        )
        self._remember(cfg)
        return cfg

    def invalidate(self) -> None:
        """Make the next ``get()`` ask the service (e.g. after another process changed the config)."""
        self._fetched_at = float("-inf")

    def _expired(self) -> bool:
        return time.monotonic() - self._fetched_at >= self._ttl_s

    async def _refresh(self) -> None:
        try:
            cfg = await call(self._nc, contract.CONFIG_GET, ConfigGet(), MeshConfig, self._timeout_s)
        except (RetryableError, ServiceCallError) as e:
            if isinstance(e, ServiceCallError) and not e.retryable:
                raise
            # serve the last good value for another ttl instead of paying the timeout on every call
            self._fetched_at = time.monotonic()
            if not self._outage:
                self._outage = True
                log.warning("config.unavailable", error=e.message, serving="last good value or fallback")
            return
        self._remember(cfg)

    def _remember(self, cfg: MeshConfig) -> None:
        if self._outage:
            self._outage = False
            log.info("config.available")
        self._value = cfg
        self._fetched_at = time.monotonic()
