"""The vector index: one RediSearch HNSW index per model, through redisvl's ``AsyncSearchIndex``.

Each model has its own index ``{prefix}_idx_{model}`` over the hash keys ``{prefix}:vec:{model}:{image_id}``,
so vectors of two models never meet in one KNN query and a new model's index can be built while the old one
serves. A document holds ``image_id`` (tag), ``tags`` (tag: ``key=value`` items for metadata filters) and
``embedding`` (HNSW, cosine, FLOAT32); an image's labels are ``label=<name>`` items of ``tags`` and their
scores a ``label_scores`` field (not indexed) that ranks a label search. Filters and the excluded query image
go into the RediSearch query itself, so KNN counts only documents that pass them (no post-filtering that could
return fewer than k).

The package, one seam a module (each imports only those above it):
  ``names``    field names, model/image id checks, tag encoding, the schema, ``FT.INFO`` parsing (pure)
  ``queries``  vector checks, the pre-filter, KNN and range queries, replies to ``Hit``s (pure)
  ``catalog``  ``IndexCatalog``: the client, the per-model indexes (create, cache, list, stats, drop) and
               which images each holds (scans)
  ``label_search``  ``LabelSearch``: the images that have any of some labels, ranked by their scores
  ``stored``   ``StoredSearch``: KNN by an image's stored vector, its state checked, in one round trip
  ``adapter``  ``VectorIndex``: the documents (upsert, delete, scans) and the queries
This module re-exports what callers use, so ``from actors.adapters.vector_index import VectorIndex`` holds.
"""

from __future__ import annotations

from actors.adapters.vector_index.adapter import VectorIndex
from actors.adapters.vector_index.catalog import LOADED_TTL_S, IndexCatalog
from actors.adapters.vector_index.label_search import LabelHits, LabelSearch
from actors.adapters.vector_index.names import (
    ID_FIELD,
    IMAGE_ID_RE,
    LABEL_KEY,
    MAX_DIM,
    MODEL_RE,
    TAG_SEPARATOR,
    TAGS_FIELD,
    VECTOR_FIELD,
    check_image_id,
    check_model,
    info_dim,
    is_missing_index,
    tag_item,
    tags_field,
)
from actors.adapters.vector_index.queries import (
    as_vector,
    distance_to_score,
    filter_expression,
    score_to_distance,
)
from actors.adapters.vector_index.stored import StoredHits

__all__ = [
    "ID_FIELD",
    "IMAGE_ID_RE",
    "LABEL_KEY",
    "LOADED_TTL_S",
    "MAX_DIM",
    "MODEL_RE",
    "TAGS_FIELD",
    "TAG_SEPARATOR",
    "VECTOR_FIELD",
    "IndexCatalog",
    "LabelHits",
    "LabelSearch",
    "StoredHits",
    "VectorIndex",
    "as_vector",
    "check_image_id",
    "check_model",
    "distance_to_score",
    "filter_expression",
    "info_dim",
    "is_missing_index",
    "score_to_distance",
    "tag_item",
    "tags_field",
]
