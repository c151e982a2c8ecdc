"""The vector index: one RediSearch HNSW index per model, through redisvl's ``AsyncSearchIndex``.

Each model has its own index ``{prefix}_idx_{model}`` over the hash keys ``{prefix}:vec:{model}:{image_id}``,
so vectors of two models never meet in one KNN query and a new model's index can be built while the old one
serves. A document holds ``image_id`` (tag), ``tags`` (tag: ``key=value`` items for metadata filters) and
``embedding`` (HNSW, cosine, FLOAT32). Filters and the excluded query image go into the RediSearch query
itself, so KNN counts only documents that pass them (no post-filtering that could return fewer than k).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any
from urllib.parse import quote

import numpy as np
import redis.asyncio as aioredis
import redis.exceptions
import structlog
from redis.typing import EncodableT, FieldT
from redisvl.exceptions import RedisVLError
from redisvl.index import AsyncSearchIndex
from redisvl.query import VectorQuery, VectorRangeQuery
from redisvl.query.filter import FilterExpression, Tag
from redisvl.schema import IndexSchema

from actors.contract import Hit, IndexStats
from actors.errors import PermanentError, RetryableError
from actors.settings import Settings

log = structlog.get_logger("vector_index")

VECTOR_FIELD = "embedding"
ID_FIELD = "image_id"
TAGS_FIELD = "tags"
TAG_SEPARATOR = ","
LOADED_TTL_S = 5.0  # how long a "fully indexed" check holds before it is made again
MAX_DIM = 32_768  # RediSearch's own limit on a vector field's DIM

# Model names become part of index names and key prefixes: no ':' (it would let one model's prefix cover
# another's) and nothing a RediSearch index name or a Redis glob would read as syntax.
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Image ids become keys and a tag value: no separator, no whitespace.
IMAGE_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")

_MISSING_INDEX = ("no such index", "unknown index name", "unknown index")


# --- pure helpers (unit-tested without Redis) -------------------------------------------------------------
def tag_item(key: str, value: str) -> str:
    """One metadata pair as a tag: ``quote(key)=quote(value)``.

    Percent-encoding everything but RFC 3986 unreserved characters keeps the separator, '=', whitespace (which
    RediSearch trims from tags) and query syntax out of the stored tag, and makes ``("a=b", "c")`` and
    ``("a", "b=c")`` different items.
    """
    return f"{quote(key, safe='')}={quote(value, safe='')}"


def tags_field(tags: Mapping[str, str]) -> str:
    """The stored value of the ``tags`` field: the items joined by the tag separator, in key order."""
    return TAG_SEPARATOR.join(tag_item(k, str(v)) for k, v in sorted(tags.items()))


def filter_expression(filters: Mapping[str, str], exclude_id: str | None = None) -> FilterExpression | None:
    """The RediSearch pre-filter for a query: every ``key=value`` filter must match, ``exclude_id`` must not.

    ``None`` means no filter (the query's pre-filter is ``*``). redisvl's ``Tag`` escapes the values for the
    query syntax, on top of :func:`tag_item`'s encoding.
    """
    expr: FilterExpression | None = None
    for key, value in sorted(filters.items()):
        clause = Tag(TAGS_FIELD) == tag_item(key, str(value))
        expr = clause if expr is None else expr & clause
    if exclude_id:
        clause = Tag(ID_FIELD) != exclude_id
        expr = clause if expr is None else expr & clause
    return expr


def score_to_distance(min_score: float) -> float:
    """The cosine-distance radius of a ``VECTOR_RANGE`` query that keeps scores >= ``min_score``."""
    if not -1.0 <= min_score <= 1.0:
        raise PermanentError(f"min_score must be in -1..1, got {min_score}", code="bad_min_score")
    return min(2.0, max(0.0, 1.0 - min_score))


def distance_to_score(distance: float | str | bytes) -> float:
    """RediSearch's cosine distance (``1 - cos``) as a cosine similarity, clamped against float32 rounding."""
    return min(1.0, max(-1.0, 1.0 - float(distance)))


def as_vector(values: Sequence[float] | np.ndarray, dim: int | None = None) -> np.ndarray:
    """A float32 vector fit for a cosine index, or ``PermanentError``: retrying a bad vector cannot help."""
    try:
        vec = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise PermanentError(f"vector is not a list of numbers: {e}", code="bad_vector") from e
    if vec.ndim != 1 or not 0 < vec.size <= MAX_DIM:
        raise PermanentError(f"vector must be 1-d with 1..{MAX_DIM} values", code="bad_vector")
    if dim is not None and vec.size != dim:
        raise PermanentError(
            f"dimension mismatch: vector has {vec.size} values, the index {dim}", code="dimension_mismatch"
        )
    if not np.all(np.isfinite(vec)):
        raise PermanentError("vector has NaN or infinite values", code="bad_vector")
    if not np.any(vec):
        # a zero vector has no cosine similarity to anything
        raise PermanentError("vector is all zeros", code="bad_vector")
    return vec


def check_model(model: str) -> str:
    if not MODEL_RE.match(model):
        raise PermanentError(f"bad model name {model!r}", code="bad_model")
    return model


def check_image_id(image_id: str) -> str:
    if not IMAGE_ID_RE.match(image_id):
        raise PermanentError(f"bad image id {image_id!r}", code="bad_image_id")
    return image_id


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """An exception and its causes: redisvl wraps redis-py's errors, whose type tells an outage apart."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def is_missing_index(exc: BaseException) -> bool:
    return any(m in str(e).lower() for e in _chain(exc) for m in _MISSING_INDEX)


@contextmanager
def redis_errors(op: str) -> Iterator[None]:
    """Turn Redis outages into ``RetryableError`` (the coordinator retries; the service answers 503)."""
    try:
        yield
    except (redis.exceptions.RedisError, RedisVLError, OSError) as exc:
        for e in _chain(exc):
            # BusyLoadingError is a ConnectionError: Redis is replaying its AOF after a restart
            if isinstance(e, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | OSError):
                raise RetryableError(f"redis unavailable during {op}: {e}") from exc
            if isinstance(e, redis.exceptions.ResponseError) and str(e).upper().startswith(
                ("LOADING", "TRYAGAIN", "BUSY")
            ):
                raise RetryableError(f"redis busy during {op}: {e}") from exc
        raise


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    return value


def info_dim(info: Mapping[str, Any]) -> int:
    """The vector field's DIM from an ``FT.INFO`` reply (attributes are flat ``[name, value, ...]`` lists)."""
    for attr in info.get("attributes", []):
        pairs = dict(zip(attr[::2], attr[1::2], strict=False))
        if pairs.get("identifier") == VECTOR_FIELD or pairs.get("attribute") == VECTOR_FIELD:
            for key, value in pairs.items():
                if str(key).lower() == "dim":
                    return int(value)
    return 0


# --- the adapter ------------------------------------------------------------------------------------------
class VectorIndex:
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
        self.m = m
        self.ef_construction = ef_construction
        self.ef_runtime = ef_runtime
        self.max_window = max_window  # k + offset: deep pages cost Redis a KNN of that size
        self._client = aioredis.Redis.from_url(
            redis_url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            health_check_interval=30,
        )
        self._indexes: dict[str, AsyncSearchIndex] = {}  # model -> index; its schema carries the dim
        self._loaded_at: dict[str, float] = {}  # model -> when its index was last seen fully indexed

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> VectorIndex:
        return cls(settings.redis_server_url, settings.redis_prefix, **kwargs)

    async def __aenter__(self) -> VectorIndex:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the Redis client (the indexes hold it with ``owns_client=False``). Safe to call twice."""
        self._indexes.clear()
        await self._client.aclose()

    # --- names -------------------------------------------------------------------------------------------
    def index_name(self, model: str) -> str:
        return f"{self.prefix}_idx_{check_model(model)}"

    def key_prefix(self, model: str) -> str:
        return f"{self.prefix}:vec:{check_model(model)}:"

    def key(self, model: str, image_id: str) -> str:
        return self.key_prefix(model) + check_image_id(image_id)

    def schema(self, model: str, dim: int) -> IndexSchema:
        """The index schema of one model; ``dim`` is fixed for the index's life."""
        return IndexSchema.from_dict(
            {
                "index": {
                    "name": self.index_name(model),
                    "prefix": self.key_prefix(model),
                    "key_separator": ":",
                    "storage_type": "hash",
                },
                "fields": [
                    {"name": ID_FIELD, "type": "tag", "attrs": {"case_sensitive": True}},
                    {
                        "name": TAGS_FIELD,
                        "type": "tag",
                        "attrs": {"separator": TAG_SEPARATOR, "case_sensitive": True},
                    },
                    {
                        "name": VECTOR_FIELD,
                        "type": "vector",
                        "attrs": {
                            "dims": dim,
                            "algorithm": "hnsw",
                            "distance_metric": "cosine",
                            "datatype": "float32",
                            "m": self.m,
                            "ef_construction": self.ef_construction,
                            # also the index default, for any query without EF_RUNTIME (10 is too low)
                            "ef_runtime": self.ef_runtime,
                        },
                    },
                ],
            }
        )

    # --- index lifecycle ---------------------------------------------------------------------------------
    async def _info(self, model: str) -> dict[str, Any] | None:
        """``FT.INFO`` of the model's index, or None when it does not exist."""
        with redis_errors("info"):
            try:
                raw = await self._client.ft(self.index_name(model)).info()
            except redis.exceptions.ResponseError as e:
                if is_missing_index(e):
                    return None
                raise
        return dict(_text(raw))

    async def _index(self, model: str) -> AsyncSearchIndex | None:
        """The model's index (cached with its schema), or None when Redis has none yet."""
        index = self._indexes.get(model)
        if index is not None:
            return index
        info = await self._info(model)
        if info is None:
            return None
        return self._remember(model, info_dim(info))

    def _remember(self, model: str, dim: int) -> AsyncSearchIndex:
        index = AsyncSearchIndex(self.schema(model, dim), redis_client=self._client, owns_client=False)
        self._indexes[model] = index
        return index

    @staticmethod
    def _dim_of(index: AsyncSearchIndex) -> int:
        return int(index.schema.fields[VECTOR_FIELD].attrs.dims)  # type: ignore[attr-defined]

    async def ensure_index(self, model: str, dim: int) -> None:
        """Create the model's index if it is missing; ``PermanentError`` if it exists with another dim."""
        if not 0 < dim <= MAX_DIM:
            raise PermanentError(f"dimension {dim} out of range", code="bad_vector")
        index = await self._index(model)
        if index is None:
            index = AsyncSearchIndex(self.schema(model, dim), redis_client=self._client, owns_client=False)
            with redis_errors("create"):
                try:
                    await index.create(overwrite=False)
                    log.info("index.created", model=model, index=self.index_name(model), dim=dim)
                except RedisVLError as e:
                    # another indexer replica created it between our FT.INFO and FT.CREATE
                    if "already exists" not in str(e).lower():
                        raise
            self._indexes.pop(model, None)
            index = await self._index(model)
            if index is None:
                raise RetryableError(f"index {self.index_name(model)} vanished right after its creation")
        existing = self._dim_of(index)
        if existing != dim:
            raise PermanentError(
                f"dimension mismatch: model {model} has a {existing}-d index, got a {dim}-d vector",
                code="dimension_mismatch",
            )

    # --- documents ---------------------------------------------------------------------------------------
    async def upsert(
        self,
        model: str,
        image_id: str,
        vector: Sequence[float] | np.ndarray,
        tags: Mapping[str, str] | None = None,
    ) -> bool:
        """Store or replace one image's vector; True when the image had none (False: a redelivered job)."""
        key = self.key(model, image_id)
        vec = as_vector(vector)
        await self.ensure_index(model, int(vec.size))
        doc: dict[FieldT, EncodableT] = {
            ID_FIELD: image_id,
            TAGS_FIELD: tags_field(tags or {}),
            VECTOR_FIELD: vec.tobytes(),
        }
        with redis_errors("upsert"):
            # DEL + HSET in one MULTI: replaces every field atomically, and DEL's count tells whether it
            # existed even when two replicas race on the same image
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping=doc)
                existed, _ = await pipe.execute()
        return int(existed) == 0

    def build_query(
        self,
        vector: np.ndarray,
        window: int,
        exclude_id: str | None = None,
        filters: Mapping[str, str] | None = None,
        ef_runtime: int | None = None,
    ) -> VectorQuery:
        """The KNN query for the ``window`` nearest documents that pass the filters, with EF_RUNTIME."""
        return VectorQuery(
            vector=vector.astype(np.float32).tobytes(),
            vector_field_name=VECTOR_FIELD,
            return_fields=[ID_FIELD],
            filter_expression=filter_expression(filters or {}, exclude_id),
            dtype="float32",
            num_results=window,
            ef_runtime=ef_runtime or self.ef_runtime,
        )

    def build_range_query(
        self,
        vector: np.ndarray,
        window: int,
        min_score: float,
        exclude_id: str | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> VectorRangeQuery:
        """A ``VECTOR_RANGE`` query: every document at least ``min_score`` similar (best first, at most
        ``window``), with the same pre-filter as KNN. HNSW range search widens by the index's EPSILON (0.01).
        """
        return VectorRangeQuery(
            vector=vector.astype(np.float32).tobytes(),
            vector_field_name=VECTOR_FIELD,
            return_fields=[ID_FIELD],
            filter_expression=filter_expression(filters or {}, exclude_id),
            dtype="float32",
            distance_threshold=score_to_distance(min_score),
            num_results=window,
        )

    async def query(
        self,
        model: str,
        vector: Sequence[float] | np.ndarray,
        k: int,
        offset: int = 0,
        exclude_id: str | None = None,
        filters: Mapping[str, str] | None = None,
        ef_runtime: int | None = None,
        min_score: float | None = None,
    ) -> list[Hit]:
        """The ``k`` nearest images after skipping ``offset``, best first; [] when the model has no index yet.

        The exclusion is part of the pre-filter, so KNN never spends a slot on the query image: asking for
        ``k + offset`` and slicing is exact. With ``min_score`` it is a range query instead: only images at
        least that similar (near-duplicates), still best first and paged the same way.
        """
        if k < 1 or offset < 0 or k + offset > self.max_window:
            raise PermanentError(f"need k >= 1, offset >= 0, k + offset <= {self.max_window}", code="bad_k")
        if ef_runtime is not None and not 1 <= ef_runtime <= 100_000:
            raise PermanentError("ef_runtime must be in 1..100000", code="bad_ef_runtime")
        index = await self._index(model)
        if index is None:
            return []
        vec = as_vector(vector, self._dim_of(index))
        await self._refuse_while_loading(model)
        q: VectorQuery | VectorRangeQuery
        if min_score is None:
            q = self.build_query(vec, k + offset, exclude_id or None, filters, ef_runtime)
        else:
            q = self.build_range_query(vec, k + offset, min_score, exclude_id or None, filters)
        with redis_errors("query"):
            try:
                # redis-py's FT.SEARCH straight: redisvl's own query path re-shapes every result (a dict per
                # document) and costs as much Python as the search itself on this hot path (ops/bench)
                res = await self._client.ft(self.index_name(model)).search(q, query_params=q.params)  # type: ignore[arg-type]
            except redis.exceptions.ResponseError as e:
                if is_missing_index(e):  # dropped behind our back (e.g. a model was retired)
                    self._indexes.pop(model, None)
                    return []
                raise
        hits = [
            Hit(image_id=str(_text(getattr(d, ID_FIELD))), score=distance_to_score(d.vector_distance))
            for d in res.docs
        ]
        return hits[offset : offset + k]

    async def image_ids(self, model: str) -> list[str]:
        """Every image id with a vector in the model's index (a SCAN of its keys: O(N), for batch work)."""
        head = self.key_prefix(model)
        ids: list[str] = []
        with redis_errors("scan"):
            async for key in self._client.scan_iter(match=head + "*", count=1000):
                ids.append(_text(key)[len(head) :])
        return sorted(ids)

    async def vectors(self, model: str, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of these images (missing ones, e.g. deleted meanwhile, are left out)."""
        out: dict[str, np.ndarray] = {}
        with redis_errors("vectors"):
            async with self._client.pipeline(transaction=False) as pipe:
                for image_id in image_ids:
                    pipe.hget(self.key(model, image_id), VECTOR_FIELD)
                raws = await pipe.execute()
        for image_id, raw in zip(image_ids, raws, strict=True):
            if raw:
                out[image_id] = np.frombuffer(raw, dtype=np.float32)
        return out

    async def neighbors(
        self, model: str, vectors: Mapping[str, np.ndarray], min_score: float, limit: int, batch: int = 100
    ) -> dict[str, list[Hit]]:
        """For each image, the others at least ``min_score`` similar (range queries, pipelined in batches)."""
        index = await self._index(model)
        if index is None or not vectors:
            return {}
        ids = list(vectors)
        queries = [self.build_range_query(vectors[i], limit, min_score, exclude_id=i) for i in ids]
        with redis_errors("neighbors"):
            rows = await index.batch_query(list(queries), batch_size=batch)
        return {
            image_id: [
                Hit(image_id=str(r[ID_FIELD]), score=distance_to_score(r["vector_distance"])) for r in hits
            ]
            for image_id, hits in zip(ids, rows, strict=True)
        }

    async def delete(self, image_id: str, model: str | None = None) -> int:
        """Remove an image's vector from one model's index, or from every model's; how many were removed."""
        models = [model] if model is not None else await self.models()
        keys = [self.key(m, image_id) for m in models]
        if not keys:
            return 0
        with redis_errors("delete"):
            return int(await self._client.delete(*keys))

    async def drop(self, model: str) -> bool:
        """Drop the model's index and its vectors (a retired model); False when it had none."""
        index = await self._index(model)
        self._indexes.pop(model, None)
        if index is None:
            return False
        with redis_errors("drop"):
            await index.delete(drop=True)
        log.info("index.dropped", model=model, index=self.index_name(model))
        return True

    async def models(self) -> list[str]:
        """The models that have an index under this prefix (from ``FT._LIST``)."""
        head = f"{self.prefix}_idx_"
        with redis_errors("list"):
            names = _text(await self._client.execute_command("FT._LIST"))
        return sorted(n[len(head) :] for n in names if n.startswith(head) and MODEL_RE.match(n[len(head) :]))

    async def _refuse_while_loading(self, model: str) -> None:
        """After a Redis restart RediSearch rebuilds the index in the background; until ``percent_indexed`` is
        1 a KNN answer would silently miss images, so queries are refused (503, retry) instead. Checked at most
        once per ``LOADED_TTL_S`` per model, so the hot path pays nothing."""
        now = time.monotonic()
        if self._loaded_at.get(model, -LOADED_TTL_S) + LOADED_TTL_S > now:
            return
        info = await self._info(model)
        done = float(info.get("percent_indexed", 1.0)) if info else 1.0
        if done < 1.0:
            raise RetryableError(
                f"the index of {model} is loading ({done:.0%} indexed)", code="index_loading"
            )
        self._loaded_at[model] = now

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

    async def ping(self) -> None:
        """Raise ``RetryableError`` unless Redis answers."""
        with redis_errors("ping"):
            await self._client.ping()
