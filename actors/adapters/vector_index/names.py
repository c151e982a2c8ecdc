"""What the vector index writes down in Redis: field names, the checks on model names and image ids, the tag
encoding of metadata, the per-model schema, and reading ``FT.INFO`` and RediSearch's error text back.

Pure functions (unit-tested without Redis).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from redisvl.schema import IndexSchema

from actors.adapters.redis_errors import causes
from actors.errors import PermanentError

VECTOR_FIELD = "embedding"
ID_FIELD = "image_id"
TAGS_FIELD = "tags"
TAG_SEPARATOR = ","
LABEL_KEY = "label"  # an image's labels are tags ``label=<name>`` (``filter=label:tabby``)
LABEL_SCORES_FIELD = "label_scores"  # not indexed: ``{"name": score}`` as JSON, for ranking a label search
MAX_DIM = 32_768  # RediSearch's own limit on a vector field's DIM

# Model names become part of index names and key prefixes: no ':' (it would let one model's prefix cover
# another's) and nothing a RediSearch index name or a Redis glob would read as syntax.
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Image ids become keys and a tag value: no separator, no whitespace.
IMAGE_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")

_MISSING_INDEX = ("no such index", "unknown index name", "unknown index")


def check_model(model: str) -> str:
    """The model name, or ``PermanentError`` when it could not be part of an index name and a key prefix."""
    if not MODEL_RE.match(model):
        raise PermanentError(f"bad model name {model!r}", code="bad_model")
    return model


def check_image_id(image_id: str) -> str:
    """The image id, or ``PermanentError`` when it could not be part of a key and a tag value."""
    if not IMAGE_ID_RE.match(image_id):
        raise PermanentError(f"bad image id {image_id!r}", code="bad_image_id")
    return image_id


def tag_item(key: str, value: str) -> str:
    """One metadata pair as a tag: ``quote(key)=quote(value)``.

    Percent-encoding everything but RFC 3986 unreserved characters keeps the separator, '=', whitespace (which
    RediSearch trims from tags) and query syntax out of the stored tag, and makes ``("a=b", "c")`` and
    ``("a", "b=c")`` different items.
    """
    return f"{quote(key, safe='')}={quote(value, safe='')}"


def tags_field(tags: Mapping[str, str], labels: Iterable[str] = ()) -> str:
    """The stored value of the ``tags`` field: the items joined by the tag separator, in key order, then one
    ``label=<name>`` item per label (a multi-valued key, which metadata cannot be)."""
    items = [tag_item(k, str(v)) for k, v in sorted(tags.items())]
    items += [tag_item(LABEL_KEY, name) for name in sorted(labels)]
    return TAG_SEPARATOR.join(dict.fromkeys(items))


@dataclass(frozen=True)
class Hnsw:
    """The HNSW graph's parameters, the same for every model's index."""

    m: int = 16
    ef_construction: int = 200
    ef_runtime: int = 200  # also the index default, for any query without EF_RUNTIME (10 is too low)


def index_schema(index_name: str, key_prefix: str, dim: int, hnsw: Hnsw) -> IndexSchema:
    """The index schema of one model; ``dim`` is fixed for the index's life."""
    return IndexSchema.from_dict(
        {
            "index": {
                "name": index_name,
                "prefix": key_prefix,
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
                        "m": hnsw.m,
                        "ef_construction": hnsw.ef_construction,
                        "ef_runtime": hnsw.ef_runtime,
                    },
                },
            ],
        }
    )


def as_text(value: Any) -> Any:
    """A Redis reply with every ``bytes`` in it decoded (lists and dicts recursively)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [as_text(v) for v in value]
    if isinstance(value, dict):
        return {as_text(k): as_text(v) for k, v in value.items()}
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


def is_missing_index(exc: BaseException) -> bool:
    """Whether RediSearch refused because the index does not exist (its message, or a cause's, says so)."""
    return any(m in str(e).lower() for e in causes(exc) for m in _MISSING_INDEX)
