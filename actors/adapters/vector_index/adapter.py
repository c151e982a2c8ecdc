"""``VectorIndex``: the documents in the per-model indexes (upsert, delete, scans) and the queries on them
(KNN, range, batched neighbours), over the index lifecycle of ``IndexCatalog``.

The similarity query is on the gateway's hot path: one ``FT.SEARCH`` round trip through redis-py straight
(plus, at most once per ``LOADED_TTL_S`` per model, an ``FT.INFO`` while the index is not known loaded); by a
stored image, one script that also reads its state and vector (``StoredSearch``, ``stored.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import redis.exceptions
from redis.typing import EncodableT, FieldT
from redisvl.query import VectorQuery, VectorRangeQuery

from actors.adapters.redis_errors import redis_errors
from actors.adapters.vector_index.names import (
    ID_FIELD,
    LABEL_SCORES_FIELD,
    TAGS_FIELD,
    VECTOR_FIELD,
    as_text,
    is_missing_index,
    tags_field,
)
from actors.adapters.vector_index.queries import (
    as_vector,
    knn_query,
    page_of_hits,
    range_query,
    row_hits,
)
from actors.adapters.vector_index.stored import StoredSearch
from actors.contract import Hit
from actors.errors import PermanentError

SAMPLE = 10  # ``neighbors`` queries this many images first: a cut far too low is refused after them


class TooManyNeighbors(PermanentError):
    """A neighbor search that would return most of the index for every image: refused, not computed."""


class VectorIndex(StoredSearch):
    """Per-model vector indexes in Redis, their documents and queries; an async context manager."""

    # --- documents ---------------------------------------------------------------------------------------
    async def upsert(
        self,
        model: str,
        image_id: str,
        vector: Sequence[float] | np.ndarray,
        tags: Mapping[str, str] | None = None,
        labels: Mapping[str, float] | None = None,
    ) -> bool:
        """Store or replace one image's vector, its tags and its labels (name -> score); True when the image
        had none (False: a redelivered job)."""
        return (await self.upsert_changed(model, image_id, vector, tags, labels))[0]

    async def upsert_changed(
        self,
        model: str,
        image_id: str,
        vector: Sequence[float] | np.ndarray,
        tags: Mapping[str, str] | None = None,
        labels: Mapping[str, float] | None = None,
    ) -> tuple[bool, bool]:
        """``upsert``, telling also whether a vector it replaced was another one: ``(created, changed)``
        (a redelivered job stores the same vector again: ``(False, False)``)."""
        key = self.key(model, image_id)
        vec = as_vector(vector)
        await self.ensure_index(model, int(vec.size))
        doc: dict[FieldT, EncodableT] = {
            ID_FIELD: image_id,
            TAGS_FIELD: tags_field(tags or {}, labels or ()),
            VECTOR_FIELD: vec.tobytes(),
        }
        if labels:
            doc[LABEL_SCORES_FIELD] = json.dumps(dict(labels), sort_keys=True)
        with redis_errors("upsert"):
            # DEL + HSET in one MULTI: replaces every field atomically, and DEL's count tells whether it
            # existed even when two replicas race on the same image (the HGET, what it held)
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hget(key, VECTOR_FIELD)
                pipe.delete(key)
                pipe.hset(key, mapping=doc)
                before, existed, _ = await pipe.execute()
        return int(existed) == 0, bool(existed) and before != doc[VECTOR_FIELD]

    async def delete(self, image_id: str, model: str | None = None) -> int:
        """Remove an image's vector from one model's index, or from every model's; how many were removed."""
        models = [model] if model is not None else await self.models()
        keys = [self.key(m, image_id) for m in models]
        if not keys:
            return 0
        with redis_errors("delete"):
            return int(await self._client.delete(*keys))

    async def scan_docs(self, cursor: int, count: int) -> tuple[int, list[tuple[str, str, str]]]:
        """One ``SCAN`` step over every model's vectors: the next cursor (0: complete) and, per document,
        ``(model, image id of its key, image id it holds)`` (the two differ only in a corrupt document)."""
        head = f"{self.prefix}:vec:"
        with redis_errors("scan_docs"):
            nxt, keys = await self._client.scan(cursor, match=head + "*", count=count, _type="hash")
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hget(key, ID_FIELD)
                held = await pipe.execute() if keys else []
        docs = []
        for key, own in zip(keys, held, strict=True):
            model, _, image_id = as_text(key)[len(head) :].partition(":")
            docs.append((model, image_id, as_text(own) if own is not None else ""))
        return int(nxt), docs

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

    # --- queries -----------------------------------------------------------------------------------------
    def build_query(
        self,
        vector: np.ndarray,
        window: int,
        exclude_id: str | None = None,
        filters: Mapping[str, str] | None = None,
        ef_runtime: int | None = None,
    ) -> VectorQuery:
        """The KNN query for the ``window`` nearest documents that pass the filters, with EF_RUNTIME."""
        return knn_query(vector, window, ef_runtime or self.ef_runtime, exclude_id, filters)

    def build_range_query(
        self,
        vector: np.ndarray,
        window: int,
        min_score: float,
        exclude_id: str | None = None,
        filters: Mapping[str, str] | None = None,
        epsilon: float | None = None,
    ) -> VectorRangeQuery:
        """A ``VECTOR_RANGE`` query for the documents at least ``min_score`` similar (``queries.range_query``)."""
        return range_query(vector, window, min_score, exclude_id, filters, epsilon)

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
        epsilon: float | None = None,
    ) -> list[Hit]:
        """The ``k`` nearest images after skipping ``offset``, best first; [] when the model has no index yet.

        The exclusion is part of the pre-filter, so KNN never spends a slot on the query image: asking for
        ``k + offset`` and slicing is exact. With ``min_score`` it is a range query instead: only images at
        least that similar (near-duplicates), still best first and paged the same way (``epsilon``: its
        search breadth, ``queries.range_query``).
        """
        self.check_page(k, offset, ef_runtime)
        known = await self._index(model)
        if known is None:
            return []
        vec = as_vector(vector, known.dim)
        await self._refuse_while_loading(model)
        q: VectorQuery | VectorRangeQuery
        if min_score is None:
            q = self.build_query(vec, k + offset, exclude_id or None, filters, ef_runtime)
        else:
            q = self.build_range_query(vec, k + offset, min_score, exclude_id or None, filters, epsilon)
        with redis_errors("query"):
            try:
                # redis-py's FT.SEARCH straight: redisvl's own query path re-shapes every result (a dict per
                # document) and costs as much Python as the search itself on this hot path (ops/bench)
                res = await self._client.ft(self.index_name(model)).search(q, query_params=q.params)
            except redis.exceptions.ResponseError as e:
                if is_missing_index(e):  # dropped behind our back (e.g. a model was retired)
                    self._forget(model)
                    return []
                raise
        return page_of_hits(res.docs, offset, k)

    async def neighbors(
        self,
        model: str,
        vectors: Mapping[str, np.ndarray],
        min_score: float,
        limit: int,
        batch: int = 100,
        max_hits: int | None = None,
        epsilon: float | None = None,
    ) -> dict[str, list[Hit]]:
        """For each image, the others at least ``min_score`` similar (range queries, pipelined in batches).

        ``max_hits``: stop once the batches so far found more hits in all, or once a first sample of
        ``SAMPLE`` images found over twice ``max_hits`` per image of the index, and raise ``TooManyNeighbors``
        (a cut so low that most of the index is near everything: the full answer would cost O(N²)).
        """
        known = await self._index(model)
        if known is None or not vectors:
            return {}
        ids = list(vectors)
        out: dict[str, list[Hit]] = {}
        found = 0
        starts = [0, *range(min(SAMPLE, len(ids)), len(ids), batch)]  # a small sample first
        for start, stop in zip(starts, [*starts[1:], len(ids)], strict=True):
            chunk = ids[start:stop]
            queries = [
                range_query(vectors[i], limit, min_score, exclude_id=i, epsilon=epsilon) for i in chunk
            ]
            with redis_errors("neighbors"):
                rows = await known.index.batch_query(queries, batch_size=batch)
            for image_id, hits in zip(chunk, rows, strict=True):
                out[image_id] = row_hits(hits)
                found += len(out[image_id])
            projected = found * len(ids) / stop  # if the rest are like the images seen so far
            if max_hits is not None and (found > max_hits or projected > 2 * max_hits):
                raise TooManyNeighbors(
                    f"more than {max_hits} pairs at cosine >= {min_score} (after {stop} of {len(ids)} images:"
                    f" {found} pairs): raise the threshold",
                    code="too_many_pairs",
                )
        return out
