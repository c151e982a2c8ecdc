"""The per-model vector indexes over one Redis client: their names, creating one (race-safe between indexer
replicas), the cache of known indexes with their dimension, listing them and the images each holds, stats and
dropping them, and refusing queries while RediSearch rebuilds an index after a restart.

``VectorIndex`` (``adapter.py``) adds the documents and the queries on top of this class.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import redis.exceptions
import structlog
from redisvl.exceptions import RedisVLError
from redisvl.index import AsyncSearchIndex
from redisvl.schema import IndexSchema

from actors.adapters.redis_client import redis_client
from actors.adapters.redis_errors import redis_errors
from actors.adapters.vector_index.names import (
    MAX_DIM,
    MODEL_RE,
    Hnsw,
    as_text,
    check_image_id,
    check_model,
    index_schema,
    info_dim,
    is_missing_index,
)
from actors.contract import IndexStats
from actors.errors import PermanentError, RetryableError
from actors.settings import RedisUser, Settings

log = structlog.get_logger("vector_index")

LOADED_TTL_S = 5.0  # how long a "fully indexed" check holds before it is made again


@dataclass(frozen=True, slots=True)
class KnownIndex:
    """A model's index as this process knows it: redisvl's handle and the vector dimension it was made with."""

    index: AsyncSearchIndex
    dim: int


class IndexCatalog:
    """Per-model vector indexes in Redis; an async context manager that closes the client it created."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        *,
        m: int = 16,
        ef_construction: int = 200,
        ef_runtime: int = 200,
        max_window: int = 10_000,
        socket_timeout_s: float = 5.0,
    ) -> None:
        self.prefix = prefix
        self.hnsw = Hnsw(m=m, ef_construction=ef_construction, ef_runtime=ef_runtime)
        self.ef_runtime = ef_runtime
        self.max_window = max_window  # k + offset: deep pages cost Redis a KNN of that size
        self._client = redis_client(redis_url, timeout_s=socket_timeout_s)
        self._known: dict[str, KnownIndex] = {}  # model -> its index and dim
        self._loaded_at: dict[str, float] = {}  # model -> when its index was last seen fully indexed

    @classmethod
    def from_settings(cls, settings: Settings, *, user: RedisUser = "ops", **kwargs: Any) -> Self:
        """Connected as ``user``'s ACL user (a service passes its own name; ``ops`` is the operators')."""
        return cls(settings.redis_url_for(user), settings.redis_prefix, **kwargs)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the Redis client (the indexes hold it with ``owns_client=False``). Safe to call twice."""
        self._known.clear()
        await self._client.aclose()

    async def ping(self) -> None:
        """Raise ``RetryableError`` unless Redis answers."""
        with redis_errors("ping"):
            await self._client.ping()

    # --- names -------------------------------------------------------------------------------------------
    def index_name(self, model: str) -> str:
        return f"{self.prefix}_idx_{check_model(model)}"

    def key_prefix(self, model: str) -> str:
        return f"{self.prefix}:vec:{check_model(model)}:"

    def key(self, model: str, image_id: str) -> str:
        return self.key_prefix(model) + check_image_id(image_id)

    def schema(self, model: str, dim: int) -> IndexSchema:
        """The index schema of one model; ``dim`` is fixed for the index's life."""
        return index_schema(self.index_name(model), self.key_prefix(model), dim, self.hnsw)

    # --- the known indexes -------------------------------------------------------------------------------
    async def _info(self, model: str) -> dict[str, Any] | None:
        """``FT.INFO`` of the model's index, or None when it does not exist."""
        with redis_errors("info"):
            try:
                raw = await self._client.ft(self.index_name(model)).info()
            except redis.exceptions.ResponseError as e:
                if is_missing_index(e):
                    return None
                raise
        return dict(as_text(raw))

    async def _index(self, model: str) -> KnownIndex | None:
        """The model's index (cached with its dim), or None when Redis has none yet."""
        known = self._known.get(model)
        if known is not None:
            return known
        info = await self._info(model)
        if info is None:
            return None
        return self._remember(model, info_dim(info))

    def _remember(self, model: str, dim: int) -> KnownIndex:
        index = AsyncSearchIndex(self.schema(model, dim), redis_client=self._client, owns_client=False)
        known = self._known[model] = KnownIndex(index, dim)
        return known

    def _forget(self, model: str) -> None:
        self._known.pop(model, None)

    async def ensure_index(self, model: str, dim: int) -> None:
        """Create the model's index if it is missing; ``PermanentError`` if it exists with another dim."""
        if not 0 < dim <= MAX_DIM:
            raise PermanentError(f"dimension {dim} out of range", code="bad_vector")
        known = await self._index(model)
        if known is None:
            index = AsyncSearchIndex(self.schema(model, dim), redis_client=self._client, owns_client=False)
            with redis_errors("create"):
                try:
                    await index.create(overwrite=False)
                    log.info("index.created", model=model, index=self.index_name(model), dim=dim)
                except RedisVLError as e:
                    # another indexer replica created it between our FT.INFO and FT.CREATE
                    if "already exists" not in str(e).lower():
                        raise
            self._forget(model)
            known = await self._index(model)
            if known is None:
                raise RetryableError(f"index {self.index_name(model)} vanished right after its creation")
        if known.dim != dim:
            raise PermanentError(
                f"dimension mismatch: model {model} has a {known.dim}-d index, got a {dim}-d vector",
                code="dimension_mismatch",
            )

    async def drop(self, model: str) -> bool:
        """Drop the model's index and its vectors (a retired model); False when it had none."""
        known = await self._index(model)
        self._forget(model)
        if known is None:
            return False
        with redis_errors("drop"):
            await known.index.delete(drop=True)
        log.info("index.dropped", model=model, index=self.index_name(model))
        return True

    async def models(self) -> list[str]:
        """The models that have an index under this prefix (from ``FT._LIST``)."""
        head = f"{self.prefix}_idx_"
        with redis_errors("list"):
            names = as_text(await self._client.execute_command("FT._LIST"))
        return sorted(n[len(head) :] for n in names if n.startswith(head) and MODEL_RE.match(n[len(head) :]))

    async def image_ids(self, model: str) -> list[str]:
        """Every image id with a vector in the model's index (a SCAN of its keys: O(N), for batch work)."""
        head = self.key_prefix(model)
        ids: list[str] = []
        with redis_errors("scan"):
            async for key in self._client.scan_iter(match=head + "*", count=1000):
                ids.append(as_text(key)[len(head) :])
        return sorted(ids)

    async def scan_ids(self, model: str, cursor: int, count: int) -> tuple[int, list[str]]:
        """One ``SCAN`` step over the model's vectors: the next cursor (0: complete) and the image ids found.
        Every image stored for the whole scan is found at least once (a batch job resumes from the cursor)."""
        head = self.key_prefix(model)
        with redis_errors("scan"):
            nxt, keys = await self._client.scan(cursor, match=head + "*", count=count, _type="hash")
        return int(nxt), [as_text(k)[len(head) :] for k in keys]

    async def present(self, model: str, image_ids: Sequence[str]) -> set[str]:
        """Which of these images have a vector in the model's index (one pipelined round trip)."""
        if not image_ids:
            return set()
        with redis_errors("present"):
            async with self._client.pipeline(transaction=False) as pipe:
                for image_id in image_ids:
                    pipe.exists(self.key(model, image_id))
                found = await pipe.execute()
        return {i for i, n in zip(image_ids, found, strict=True) if n}

    async def stats(self, model: str) -> IndexStats:
        """The model's index as ``FT.INFO`` sees it (``percent_indexed`` < 1 while Redis rebuilds it)."""
        name = self.index_name(model)
        info = await self._info(model)
        if info is None:
            return IndexStats(model=model, index=name, exists=False)
        return IndexStats(
            model=model,
            index=name,
            exists=True,
            num_docs=int(float(info.get("num_docs", 0))),
            percent_indexed=float(info.get("percent_indexed", 0.0)),
            dim=info_dim(info),
        )

    async def require_loaded(self, model: str) -> None:
        """``RetryableError`` (``index_loading``) while RediSearch rebuilds the model's index: batch work that
        must not miss images (the kept groups' build and splits) waits, like a query."""
        await self._refuse_while_loading(model)

    async def _refuse_while_loading(self, model: str) -> None:
        """After a Redis restart RediSearch rebuilds the index in the background; until ``percent_indexed`` is
        1 a KNN answer would silently miss images, so queries are refused (503, retry) instead. Checked at most
        once per ``LOADED_TTL_S`` per model, so the hot path pays nothing."""
        now = time.monotonic()
        if self._loaded_recently(model, now):
            return
        info = await self._info(model)
        done = float(info.get("percent_indexed", 1.0)) if info else 1.0
        if done < 1.0:
            raise RetryableError(
                f"the index of {model} is loading ({done:.0%} indexed)", code="index_loading"
            )
        self._loaded_at[model] = now

    def _loaded_recently(self, model: str, now: float | None = None) -> bool:
        """Whether the model's index was seen fully indexed less than ``LOADED_TTL_S`` ago (no check due)."""
        at = time.monotonic() if now is None else now
        return self._loaded_at.get(model, -LOADED_TTL_S) + LOADED_TTL_S > at
