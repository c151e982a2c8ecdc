"""The near-duplicate groups kept at index time, in Redis: union-find state per (model, threshold), written only
through the atomic scripts of ``group_scripts.py``.

Keys (``P`` is ``settings.redis_prefix``; a *state* is one model's groups at one threshold, kept under a
generation number ``<gen>`` so that a state retired and kept again never meets its old keys):

  ``P:dup:kept``          hash: ``<model>|<threshold>`` -> ``<gen>``, the states kept now (every indexer joins
                          each new vector of that model into each of them)
  ``P:dup:seq``           counter of generations
  ``P:dup:lease``         the keeper's lease (one indexer at a time builds, repairs and drops states)
  ``P:dup:dropping``      set: retired generations whose keys are being deleted, a batch at a time
  ``P:dup:<gen>:meta``    hash: ``model``, ``threshold``, ``status`` (building | ready), the build's SCAN
                          ``cursor`` and ``scanned`` count, ``started_at``, ``ready_at``, ``seq`` (group ids),
                          ``layout`` (the storage layout it was written under)
  ``P:dup:<gen>:of``      hash: image id -> its group's id, for the images in a group of two or more
  ``P:dup:<gen>:m:<gid>`` sorted set (scores 0, so ids in byte order): a group's members
  ``P:dup:<gen>:first``   sorted set (scores 0): every group's smallest id, what ``GET /duplicates`` pages by
  ``P:dup:<gen>:dirty``   set: groups that lost an image and wait for a split (until then a superset of the
                          right groups: no pair is ever missing)

A Redis outage raises ``RetryableError`` (``adapters/redis_errors.py``). The indexer's ACL user needs the
``P:dup:*`` keys and the commands the scripts run (docs/RELIABILITY.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock

from actors.adapters import group_scripts
from actors.adapters.redis_client import redis_client
from actors.adapters.redis_errors import redis_errors
from actors.contract.layout import LAYOUT
from actors.errors import PermanentError
from actors.settings import RedisUser, Settings

LEASE_S = 10.0  # a keeper that dies holding the lease is replaced after this long


class GroupTooLarge(PermanentError):
    """A group too large to answer in one reply (a threshold so low that most images are near each other)."""

    code = "group_too_large"


@dataclass(frozen=True, slots=True)
class KeptState:
    """One kept state as stored: its name (``field``), generation and meta."""

    field: str
    gen: str
    model: str
    threshold: float
    status: str = "building"  # building | ready
    cursor: int = 0  # the build's SCAN cursor over the model's vectors
    scanned: int = 0  # images the build has joined so far
    started_at: float = 0.0


@dataclass(frozen=True, slots=True)
class GroupsPage:
    """A page of stored groups; ``status`` "ready", or "building" / "none" with no groups."""

    status: str
    scanned: int
    total_groups: int = 0
    groups: tuple[list[str], ...] = ()
    next_cursor: str | None = None


class GroupStore:
    """The kept groups over one Redis client; an async context manager that closes the client it created."""

    def __init__(self, client: aioredis.Redis, prefix: str, *, owns_client: bool = False) -> None:
        self._r = client
        self._owns = owns_client
        self.prefix = prefix
        self.head = f"{prefix}:dup:"
        self.kept_key = f"{prefix}:dup:kept"
        self.dropping_key = f"{prefix}:dup:dropping"
        self._scripts = {
            name: client.register_script(getattr(group_scripts, name))
            for name in ("JOIN", "LEAVE", "SPLIT", "PAGE", "ADOPT", "RETIRE", "ADVANCE", "DROP")
        }

    @classmethod
    def from_settings(cls, settings: Settings, *, user: RedisUser = "ops") -> Self:
        """A store with its own client, as ``user``'s ACL user (the indexer passes its own name)."""
        return cls(redis_client(settings.redis_url_for(user)), settings.redis_prefix, owns_client=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._owns:
            await self._r.aclose()

    def ns(self, gen: str) -> str:
        return f"{self.head}{gen}"

    def lease(self, timeout_s: float = LEASE_S) -> Lock:
        """The keeper's lease (redis-py's ``Lock``, not blocking; ``acquire(token=...)`` names the holder)."""
        return Lock(self._r, f"{self.head}lease", timeout=timeout_s, blocking=False, thread_local=False)

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        with redis_errors(f"groups {name.lower()}"):
            return await self._scripts[name](keys=list(keys), args=list(args))

    # --- which states are kept ----------------------------------------------------------------------------
    async def states(self, model: str | None = None) -> list[KeptState]:
        """The kept states (of one model, or all), with their meta; one round trip each way."""
        with redis_errors("groups states"):
            kept = {_text(f): _text(g) for f, g in (await self._r.hgetall(self.kept_key)).items()}
            if not kept:
                return []
            async with self._r.pipeline(transaction=False) as pipe:
                for gen in kept.values():
                    pipe.hgetall(f"{self.ns(gen)}:meta")
                metas = await pipe.execute()
        out = []
        for (field, gen), raw in zip(kept.items(), metas, strict=True):
            meta = {_text(k): _text(v) for k, v in raw.items()}
            if not meta or (model is not None and meta.get("model") != model):
                continue
            out.append(
                KeptState(
                    field=field,
                    gen=gen,
                    model=meta.get("model", ""),
                    threshold=float(meta.get("threshold", "0") or 0),
                    status=meta.get("status", "building"),
                    cursor=int(meta.get("cursor", "0") or 0),
                    scanned=int(meta.get("scanned", "0") or 0),
                    started_at=float(meta.get("started_at", "0") or 0),
                )
            )
        return sorted(out, key=lambda s: s.field)

    async def adopt(self, field: str, model: str, threshold: float) -> str:
        """Keep the state ``field`` (a new generation, building) unless it is kept already; its generation."""
        args = [field, self.head, model, repr(float(threshold)), time.time(), LAYOUT]
        return _text(await self._run("ADOPT", [self.kept_key, f"{self.head}seq"], args))

    async def retire(self, state: KeptState) -> bool:
        """Stop keeping a state; its keys are deleted by ``drop_step``. False when it was not kept (any more)."""
        done = await self._run("RETIRE", [self.kept_key, self.dropping_key], [state.field, state.gen])
        return bool(done == 1)

    async def dropping(self) -> list[str]:
        """The retired generations whose keys are still being deleted."""
        with redis_errors("groups dropping"):
            return sorted(_text(g) for g in await self._r.smembers(self.dropping_key))

    async def drop_step(self, gen: str, batch: int = 100) -> int:
        """Delete up to ``batch`` groups of a retired generation; 0 once it is gone entirely."""
        return int(await self._run("DROP", [self.dropping_key], [self.ns(gen), batch, gen]))

    async def advance(self, state: KeptState, cursor: int, joined: int, complete: bool) -> bool:
        """Record a build batch: the SCAN cursor after it, its image count, and whether the build is complete
        (the state is ready then). False when the state was retired meanwhile."""
        args = [cursor, joined, int(complete), time.time()]
        return bool(await self._run("ADVANCE", [self.kept_key], self._state_args(state, *args)) == 1)

    # --- the groups ---------------------------------------------------------------------------------------
    def _state_args(self, state: KeptState, *rest: Any) -> list[Any]:
        return [state.field, state.gen, self.ns(state.gen), *rest]

    async def join(self, state: KeptState, vector_head: str, image_id: str, neighbours: Sequence[str]) -> int:
        """Join an image and its neighbours (their groups, or themselves) into one group, atomically. Images
        without a key under ``vector_head`` (deleted meanwhile) are left out. Returns how many images moved;
        -1 when the state was retired meanwhile, -2 when the image itself is gone."""
        args = self._state_args(state, vector_head, image_id, *neighbours)
        return int(await self._run("JOIN", [self.kept_key], args))

    async def leave(self, state: KeptState, image_id: str) -> str | None:
        """Take an image out of its group; the group's id when what is left needs a split (marked dirty)."""
        got = await self._run("LEAVE", [self.kept_key], self._state_args(state, image_id))
        gid = _text(got) if isinstance(got, bytes | str) else ""
        return gid or None

    async def members(self, state: KeptState, gid: str) -> list[str]:
        """A group's members, in order."""
        with redis_errors("groups members"):
            return [_text(m) for m in await self._r.zrange(f"{self.ns(state.gen)}:m:{gid}", 0, -1)]

    async def group_of(self, state: KeptState, image_id: str) -> str | None:
        """The id of the image's group, or None when it is in none."""
        with redis_errors("groups group_of"):
            gid = await self._r.hget(f"{self.ns(state.gen)}:of", image_id)
        return _text(gid) if gid is not None else None

    async def split(
        self, state: KeptState, gid: str, snapshot: Sequence[str], components: Sequence[Sequence[str]]
    ) -> bool:
        """Replace a group by ``components`` (largest first, each sorted) if its members are still exactly
        ``snapshot``; False when it changed meanwhile (or the state was retired)."""
        encoded: list[Any] = [gid, len(snapshot), *snapshot]
        for part in components:
            encoded += [len(part), *part]
        return bool(await self._run("SPLIT", [self.kept_key], self._state_args(state, *encoded)) == 1)

    async def dirty(self, state: KeptState, n: int) -> list[str]:
        """Up to ``n`` groups waiting for a split."""
        with redis_errors("groups dirty"):
            picked = await self._r.srandmember(f"{self.ns(state.gen)}:dirty", n)
        return [_text(g) for g in picked or []] if isinstance(picked, list) else []

    async def page(self, field: str, cursor: str, limit: int, max_ids: int) -> GroupsPage:
        """A page of the kept state ``field``'s groups, by smallest id after ``cursor``, read atomically; a
        page stops early rather than pass ``max_ids`` images (``GroupTooLarge`` for one group over it)."""
        raw = await self._run("PAGE", [self.kept_key], [field, self.head, cursor, limit, max_ids])
        status, scanned = _text(raw[0]), int(_text(raw[1]))
        if status != "ready":
            return GroupsPage(status=status, scanned=scanned)
        groups = tuple([_text(m) for m in members] for members in raw[4:])
        if len(groups) == 1 and len(groups[0]) > max_ids:
            raise GroupTooLarge(
                f"a group of {len(groups[0])} images at this threshold is over the {max_ids} one reply holds: "
                "raise near_duplicate_threshold"
            )
        nxt = _text(raw[3])
        return GroupsPage(
            status=status, scanned=scanned, total_groups=int(raw[2]), groups=groups, next_cursor=nxt or None
        )


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


__all__ = ["LEASE_S", "GroupStore", "GroupTooLarge", "GroupsPage", "KeptState"]
