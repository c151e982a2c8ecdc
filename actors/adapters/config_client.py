"""The mesh's runtime configuration as the gateway and the actors see it: ``ConfigClient.get()``.

The config actor owns the Config DB (a NATS KV bucket) and answers ``config.get`` / ``config.set``. A started
``ConfigClient`` (``async with ConfigClient.from_settings(nc, settings) as config``, or ``start``/``close``)
follows the bucket with a KV watch (``actors.adapters.config_watch``): it reads the current document at start,
then every change arrives as soon as it is written, so ``get()`` answers the latest without a round trip.

When the watch is down (NATS outage, the bucket not created yet, no permission to watch) the client keeps
serving the last good value, or the fallback seeded from settings when it never had one, asks ``config.get``
at most every ``poll_s`` meanwhile, and reopens the watch with a backoff; after a NATS reconnect it opens a
fresh watch, whose first document covers whatever changed during the outage. An outage of the config actor
or of NATS never stops the mesh. A client that is not started (a one-off reader: the CLI, a test) asks
``config.get`` on every ``get()``. ``set()`` always goes through ``config.set``, which validates.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import structlog
from nats.aio.client import Client

from actors import contract
from actors.adapters.config_watch import ConfigWatch
from actors.contract import ConfigGet, ConfigSet, MeshConfig
from actors.errors import RetryableError, ServiceCallError
from actors.rpc import call
from actors.settings import Settings

log = structlog.get_logger("config_client")

RETRY_MIN_S = 0.2  # the first wait before reopening a watch that failed; doubles up to RETRY_MAX_S
RETRY_MAX_S = 5.0


def mesh_config_defaults(settings: Settings) -> MeshConfig:
    """The Config DB's seed: ``MeshConfig`` defaults, with the fields settings carry taken from settings."""
    return MeshConfig(
        active_model=settings.default_model,
        max_upload_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_pixels,
    )


class ConfigClient:
    """Reader (following the Config DB once started) and writer of the mesh's configuration.

    ``fallback`` is served until the Config DB or the config service has answered; pass
    ``mesh_config_defaults(settings)`` (``from_settings`` does) so that a process started while they are
    down still uses the operator's seeds (``MeshConfig()`` otherwise). ``poll_s``: while the watch is down,
    ask ``config.get`` at most this often. ``timeout_s`` bounds each request.
    """

    def __init__(
        self,
        nc: Client,
        *,
        bucket: str = "config",
        fallback: MeshConfig | None = None,
        poll_s: float = 5.0,
        timeout_s: float = 2.0,
    ) -> None:
        self._nc = nc
        self._poll_s = poll_s
        self._timeout_s = timeout_s
        self._value = fallback if fallback is not None else MeshConfig()
        self._watch = ConfigWatch(nc, bucket, self._value, timeout_s)
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._live = False  # the watch is up: _value is the bucket's latest
        self._ready = asyncio.Event()  # the first attempt (watch, then config.get) is over
        self._changed = asyncio.Event()  # set (and replaced) on every new value
        self._polled_at = float("-inf")  # monotonic time of the last good config.get while the watch was down
        self._outage = False  # config.get failed: logged once, until it answers again
        self._watch_down: str | None = None  # why the watch is down: logged once, until it is up again

    @classmethod
    def from_settings(cls, nc: Client, settings: Settings) -> ConfigClient:
        """A client for this deployment's bucket, seeds and poll interval (start it, or ``async with``)."""
        return cls(
            nc,
            bucket=settings.config_bucket,
            fallback=mesh_config_defaults(settings),
            poll_s=settings.config_poll_s,
        )

    async def __aenter__(self) -> ConfigClient:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Read the current configuration, then follow the Config DB in a background task.

        Returns once the first document is in (from the watch, else from ``config.get``) or neither answered
        (the fallback stands; the task keeps trying); each try is bounded by ``timeout_s``.
        """
        if self._started:
            return
        self._started = True
        self._task = asyncio.create_task(self._follow(), name="config-watch")
        await self._ready.wait()

    async def close(self) -> None:
        """Stop following; ``get()`` then answers the last value it had."""
        task, self._task = self._task, None
        self._live = False
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def live(self) -> bool:
        """Whether the watch is up, i.e. ``get()`` answers the bucket's latest."""
        return self._live

    async def get(self) -> MeshConfig:
        """The current configuration: the latest the watch brought, without a round trip, once started."""
        if self._started:
            return self._value
        try:  # not started: a one-off reader asks every time, and serves the last good value on an outage
            self._remember(await self.read())
        except RetryableError as e:
            self._unavailable(e)
        return self._value

    async def read(self) -> MeshConfig:
        """The configuration as the config actor answers it now (one round trip); ``get()`` is left as it is.

        For a decision that must not act on a value even milliseconds old (the model switch's swap). Raises
        ``RetryableError`` when the config service does not answer.
        """
        return await call(self._nc, contract.CONFIG_GET, ConfigGet(), MeshConfig, self._timeout_s)

    async def set(self, key: str, value: Any) -> MeshConfig:
        """Set one field in the Config DB and return the new configuration; ``get()`` answers it at once.

        Raises ``ServiceCallError`` (code ``"400"``, description naming the key and the reason) when the
        config actor refuses the value, and ``RetryableError`` when it does not answer.
        """
        cfg = await call(
            self._nc, contract.CONFIG_SET, ConfigSet(key=key, value=value), MeshConfig, self._timeout_s
        )
        # the watch brings the write in a few ms: wait for it rather than overwrite a newer value it brought
        new = getattr(cfg, key)
        if not (self._live and await self._until(lambda c: getattr(c, key) == new, self._timeout_s)):
            self._remember(cfg)
        return cfg

    # --- following the Config DB ------------------------------------------------------------------------
    async def _follow(self) -> None:
        try:
            await self._follow_until_closed()
        finally:
            self._live = False
            self._ready.set()  # never leave start() waiting (the connection closed before a first try)

    async def _follow_until_closed(self) -> None:
        delay = RETRY_MIN_S
        while not self._nc.is_closed:
            try:
                await self._watch.run(self._on_watch)  # returns after a NATS reconnect: reopen at once
                delay = RETRY_MIN_S
                continue
            except RetryableError as e:
                self._down(e.message)
            except (
                Exception
            ) as e:  # broad on purpose: a bug in one update must not stop the following for good
                log.exception("config.watch_crashed")
                self._down(f"{type(e).__name__}: {e}")
            finally:
                self._live = False
            if time.monotonic() - self._polled_at >= self._poll_s:
                await self._poll()
            self._ready.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def _on_watch(self, cfg: MeshConfig) -> None:
        if not self._live:
            self._live = True
            log.info("config.watching", recovered=self._watch_down is not None)
            self._watch_down = None
        self._remember(cfg)
        self._ready.set()

    def _down(self, why: str) -> None:
        if self._watch_down is None:
            log.warning("config.watch_down", error=why, serving="last good value, polling config.get")
        self._watch_down = why

    async def _poll(self) -> None:
        try:
            cfg = await self.read()
        except RetryableError as e:
            self._unavailable(e)
            return
        except (
            ServiceCallError
        ) as e:  # a refused config.get is a bug of the config actor: keep the last value
            log.error("config.get_refused", error=e.message)
            return
        self._polled_at = time.monotonic()
        if not self._live:  # a watch that came up meanwhile has the newer value
            self._remember(cfg)

    def _unavailable(self, e: RetryableError) -> None:
        if not self._outage:
            self._outage = True
            log.warning("config.unavailable", error=e.message, serving="last good value or fallback")

    def _remember(self, cfg: MeshConfig) -> None:
        if self._outage:
            self._outage = False
            log.info("config.available")
        self._value = cfg
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until(self, done: Callable[[MeshConfig], bool], timeout_s: float) -> bool:
        """Wait until ``done(get())`` or ``timeout_s`` passed; whether it came true."""
        deadline = time.monotonic() + timeout_s
        while not done(self._value):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True
