"""The model switch's progress store: one Redis hash per switch, and which switch was the latest.

The coordinator's switcher (``actors/model_switch.py``) writes it; the gateway's ``GET /models`` reads it. Both
go through this adapter, so neither spells a key or the hash's format. Keys (``P`` is ``settings.redis_prefix``):

  ``P:switch:<model>``  hash: the switch to ``<model>`` (see ``Progress``)
  ``P:switch:last``     the model of the latest switch (shown once it is over)

A Redis outage raises ``RetryableError`` (``adapters/redis_errors.py``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import TracebackType

import msgspec
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from actors.adapters.redis_client import redis_client
from actors.adapters.redis_errors import maps_redis_errors
from actors.contract import MeshConfig


class SwitchState(enum.StrEnum):
    BUILDING = "building"  # re-embedding the images that lack a vector under the new model
    SWAPPING = "swapping"  # complete: writing active_model
    DONE = "done"
    FAILED = "failed"  # the model can not be switched to (not served, not an image model)
    CANCELLED = "cancelled"  # next_model was cleared or changed before the swap


FINISHED = frozenset({SwitchState.DONE, SwitchState.FAILED, SwitchState.CANCELLED})


class Progress(msgspec.Struct, kw_only=True):
    """A switch's progress, as stored in ``<prefix>:switch:<model>`` and shown by ``GET /models``."""

    model: str
    state: SwitchState
    from_model: str = ""
    done: int = 0  # done images with a vector under ``model``
    total: int = 0  # done images
    round: int = 0  # bumped when a stalled switch publishes its jobs again
    started_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float = 0.0
    reason: str = ""


def switch_target(cfg: MeshConfig) -> str | None:
    """The model a switch is building, or None. ``next_model == active_model`` is a swap half done: none."""
    return cfg.next_model if cfg.next_model and cfg.next_model != cfg.active_model else None


def progress_key(prefix: str, model: str) -> str:
    return f"{prefix}:switch:{model}"


def last_key(prefix: str) -> str:
    """The model of the latest switch (for ``GET /models`` once it is over)."""
    return f"{prefix}:switch:last"


def encode_progress(p: Progress) -> dict[str, str]:
    return {k: str(v) for k, v in msgspec.structs.asdict(p).items()}


def decode_progress(raw: Mapping[bytes | str, bytes | str]) -> Progress | None:
    """The stored hash as a ``Progress``; None when there is none or it does not parse (a foreign write)."""
    if not raw:
        return None
    fields = {_text(k): _text(v) for k, v in raw.items()}
    try:
        return msgspec.convert(fields, Progress, strict=False)
    except msgspec.ValidationError:
        return None


class SwitchProgress:
    """Reads and writes switches' progress. ``from_url`` owns its client (close it, or use ``async with``);
    given a client, the caller owns it."""

    def __init__(self, redis: aioredis.Redis, prefix: str, *, owns_client: bool = False) -> None:
        self.redis, self.prefix, self._owns_client = redis, prefix, owns_client

    @classmethod
    def from_url(cls, url: str, prefix: str) -> SwitchProgress:
        """A short-lived store for operator routes (not the hot path): its own client, quick timeouts."""
        client = redis_client(url)
        return cls(client, prefix, owns_client=True)

    async def close(self) -> None:
        if self._owns_client:
            await self.redis.aclose()

    async def __aenter__(self) -> SwitchProgress:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @maps_redis_errors
    async def read(self, model: str | None = None) -> Progress | None:
        """The progress of the switch to ``model`` (default: the latest switch), or None."""
        if model is None:
            last = await self.redis.get(last_key(self.prefix))
            if not last:
                return None
            model = _text(last)
        return decode_progress(await self.redis.hgetall(progress_key(self.prefix, model)))

    @maps_redis_errors
    async def save(self, prog: Progress) -> None:
        # redis-py's mapping type is invariant in its keys: spell it out rather than ignore the check
        fields: dict[FieldT, EncodableT] = {k: v for k, v in encode_progress(prog).items()}
        await self.redis.hset(progress_key(self.prefix, prog.model), mapping=fields)

    @maps_redis_errors
    async def mark_latest(self, model: str) -> None:
        """Make the switch to ``model`` the one ``read()`` answers by default."""
        await self.redis.set(last_key(self.prefix), model)


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
