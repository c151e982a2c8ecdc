"""Query parameters shared by the search routes: metadata filters and result pages (pure, unit-tested).

``filter=key:value`` (repeatable, ANDed) matches an image's upload metadata exactly; numbers match their JSON
text (``n:3`` finds ``{"n": 3}``). The filters travel to the indexer, which puts them into the RediSearch
query (``actors.adapters.vector_index.filter_expression``), so KNN counts only matching images.

Pages: ``k`` results after skipping ``offset``. ``k`` above the configured ``max_k`` is clamped to it (the
reply's length says so); ``offset`` is at most ``MAX_OFFSET``, and ``k + offset`` at most ``MAX_WINDOW``
(the KNN window Redis computes for a deep page).
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from fastapi import Query

from actors.contract import MeshConfig
from gateway.errors import ApiError
from gateway.metadata import MAX_KEY_CHARS, MAX_VALUE_CHARS

MAX_FILTERS: Final = 16
MAX_OFFSET: Final = 10_000
MAX_WINDOW: Final = 10_000  # the indexer's k + offset limit (VectorIndex.max_window)
_KEY = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_KEY_CHARS}}}")


def _bad(code: str, message: str) -> ApiError:
    """A bad query parameter: 400 with ``code``."""
    return ApiError(400, code, message)


def parse_filters(raw: list[str]) -> dict[str, str]:
    """``["color:red", "album:2024:summer"]`` -> ``{"color": "red", "album": "2024:summer"}``.

    The key ends at the first ':' (metadata keys cannot hold one); the value is the rest, verbatim, and may
    be empty. The same key twice with two values can never match (a key has one value): refused, not
    silently empty. Raises ``ApiError`` 400 ``bad_filter``.
    """
    if len(raw) > MAX_FILTERS:
        raise _bad("bad_filter", f"at most {MAX_FILTERS} filters, got {len(raw)}")
    out: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition(":")
        if not sep:
            raise _bad("bad_filter", f"filter {item[:80]!r} is not key:value")
        if not _KEY.fullmatch(key):
            raise _bad("bad_filter", f"filter key {key[:80]!r} must be 1-{MAX_KEY_CHARS} of [A-Za-z0-9_.-]")
        if len(value) > MAX_VALUE_CHARS:
            raise _bad("bad_filter", f"filter value of {key!r} is over {MAX_VALUE_CHARS} characters")
        if out.get(key, value) != value:
            raise _bad("bad_filter", f"filter key {key!r} is given two different values")
        out[key] = value
    return out


def page_size(k: int | None, offset: int, cfg: MeshConfig) -> int:
    """The number of results to ask for: ``k`` (default ``default_k``) clamped to ``max_k``.

    Raises ``ApiError`` 400 ``bad_page`` when the page lies beyond ``MAX_OFFSET``/``MAX_WINDOW``.
    """
    size = min(k or cfg.default_k, cfg.max_k)
    if size < 1:
        raise _bad("bad_page", "k must be >= 1")
    if not 0 <= offset <= MAX_OFFSET or size + offset > MAX_WINDOW:
        raise _bad("bad_page", f"need 0 <= offset <= {MAX_OFFSET} and k + offset <= {MAX_WINDOW}")
    return size


# FastAPI declarations, so every route documents the parameters the same way
KParam = Annotated[
    int | None,
    Query(ge=1, description="how many results (default: the config's default_k; above max_k: clamped to it)"),
]
OffsetParam = Annotated[
    int, Query(ge=0, le=MAX_OFFSET, description=f"results to skip (at most {MAX_OFFSET}), for paging")
]
FilterParam = Annotated[
    list[str],
    Query(
        alias="filter",
        description="metadata filter `key:value`; repeat it to AND several (`?filter=a:1&filter=b:x`)",
    ),
]
