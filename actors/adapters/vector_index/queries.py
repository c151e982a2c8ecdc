"""The vector index's queries as pure functions: vector checks, the RediSearch pre-filter, KNN and range query
building, and turning replies into ``Hit``s (scores are cosine similarities).

Filters and the excluded query image go into the RediSearch query itself, so KNN counts only documents that
pass them (no post-filtering that could return fewer than k).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from redisvl.query import FilterQuery, VectorQuery, VectorRangeQuery
from redisvl.query.filter import FilterExpression, Tag

from actors.adapters.vector_index.names import (
    ID_FIELD,
    LABEL_KEY,
    LABEL_SCORES_FIELD,
    MAX_DIM,
    TAGS_FIELD,
    VECTOR_FIELD,
    as_text,
    tag_item,
)
from actors.contract import Hit
from actors.errors import PermanentError


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


def knn_query(
    vector: np.ndarray,
    window: int,
    ef_runtime: int,
    exclude_id: str | None = None,
    filters: Mapping[str, str] | None = None,
) -> VectorQuery:
    """The KNN query for the ``window`` nearest documents that pass the filters, with EF_RUNTIME."""
    return VectorQuery(
        vector=vector.astype(np.float32).tobytes(),
        vector_field_name=VECTOR_FIELD,
        return_fields=[ID_FIELD],
        filter_expression=filter_expression(filters or {}, exclude_id),
        dtype="float32",
        num_results=window,
        ef_runtime=ef_runtime,
    )


def knn_command(
    index_name: str,
    window: int,
    ef_runtime: int,
    exclude_id: str | None = None,
    filters: Mapping[str, str] | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """``knn_query``'s ``FT.SEARCH`` without its vector: the arguments (the index name, the query and its
    options, as redis-py sends them) and the query parameters other than the vector, which a script in Redis
    adds (``stored.py``). Built by ``knn_query`` itself, so the two cannot drift apart."""
    q = knn_query(np.empty(0, np.float32), window, ef_runtime, exclude_id, filters)
    params = {k: v for k, v in q.params.items() if k != VectorQuery.VECTOR_PARAM}
    return [index_name, *q.get_args()], params


def reply_hits(reply: Sequence[Any], offset: int, k: int) -> list[Hit]:
    """The hits ``offset .. offset + k`` of a raw RESP2 ``FT.SEARCH`` reply of ``knn_command``'s query
    (``[total, key, [field, value, ...], key, ...]``), as ``page_of_hits`` reads redis-py's documents."""
    hits = []
    for fields in reply[2::2][offset : offset + k]:
        doc = {as_text(name): value for name, value in zip(fields[::2], fields[1::2], strict=True)}
        hits.append(
            Hit(
                image_id=str(as_text(doc[ID_FIELD])),
                score=distance_to_score(doc[VectorQuery.DISTANCE_ID]),
            )
        )
    return hits


def range_query(
    vector: np.ndarray,
    window: int,
    min_score: float,
    exclude_id: str | None = None,
    filters: Mapping[str, str] | None = None,
    epsilon: float | None = None,
) -> VectorRangeQuery:
    """A ``VECTOR_RANGE`` query: every document at least ``min_score`` similar (best first, at most
    ``window``), with the same pre-filter as KNN. HNSW range search explores the graph up to the radius
    widened by ``epsilon`` (None: the index's EPSILON, 0.01): a wider one misses fewer documents.
    """
    return VectorRangeQuery(
        vector=vector.astype(np.float32).tobytes(),
        vector_field_name=VECTOR_FIELD,
        return_fields=[ID_FIELD],
        filter_expression=filter_expression(filters or {}, exclude_id),
        dtype="float32",
        distance_threshold=score_to_distance(min_score),
        epsilon=epsilon,
        num_results=window,
    )


def page_of_hits(docs: Sequence[Any], offset: int, k: int) -> list[Hit]:
    """The hits ``offset .. offset + k`` of redis-py's ``FT.SEARCH`` documents (``Result.docs``), best first."""
    return [
        Hit(image_id=str(as_text(getattr(d, ID_FIELD))), score=distance_to_score(d.vector_distance))
        for d in docs[offset : offset + k]
    ]


def row_hits(rows: Iterable[Mapping[str, Any]]) -> list[Hit]:
    """The hits of one redisvl query result (a dict per document), in its order."""
    return [Hit(image_id=str(r[ID_FIELD]), score=distance_to_score(r["vector_distance"])) for r in rows]


def label_query(names: Sequence[str], window: int, filters: Mapping[str, str] | None = None) -> FilterQuery:
    """The documents that have any of the labels ``names`` (and pass the filters), with their label scores:
    at most ``window`` of them, in no particular order (``rank_by_labels`` orders them)."""
    has_label = Tag(TAGS_FIELD) == [tag_item(LABEL_KEY, n) for n in names]
    others = filter_expression(filters or {})
    return FilterQuery(
        filter_expression=has_label if others is None else has_label & others,
        return_fields=[ID_FIELD, LABEL_SCORES_FIELD],
        num_results=window,
    )


def label_scores(raw: Any) -> dict[str, float]:
    """A document's ``label_scores`` field (JSON ``{"name": score}``); {} when absent or unreadable."""
    try:
        scores = json.loads(as_text(raw)) if raw else {}
    except (TypeError, ValueError):
        return {}
    return {str(k): float(v) for k, v in scores.items()} if isinstance(scores, dict) else {}


def rank_by_labels(docs: Iterable[Any], names: Sequence[str]) -> list[Hit]:
    """Every document as a hit scored by the summed probability of its labels among ``names``: best first,
    ties by image id (stable pages)."""
    wanted = set(names)
    hits = []
    for d in docs:
        scores = label_scores(getattr(d, LABEL_SCORES_FIELD, None))
        total = sum(v for k, v in scores.items() if k in wanted)
        hits.append(Hit(image_id=str(as_text(getattr(d, ID_FIELD))), score=round(min(1.0, total), 4)))
    hits.sort(key=lambda h: (-h.score, h.image_id))
    return hits
