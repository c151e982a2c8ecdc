"""The library's listing: a RediSearch index over the image records, newest first, filtered, cursor-paged.

The index ``{prefix}_records_idx`` covers the record hashes ``{prefix}:image:*`` (``workflow_store``): their
``created_at`` (numeric, sortable), ``status`` (tag) and the tag items ``mtags`` (upload metadata and what the
steps added, ``key=value``) and ``ltags`` (labels, ``label=<name>``). RediSearch indexes a hash as it is written,
so a new upload is listed as soon as its record exists; records written before this index existed are indexed
by ``FT.CREATE``'s own scan of the prefix (without tags until their next write: the reconciler's thumbnail
backfill rewrites them).

Pages are newest first; the cursor is the last item's ``(created_at, image id)``, so uploads that arrive while
someone pages never shift the pages already seen. Ties on ``created_at`` (the same microsecond) are ordered by
image id, descending.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.commands.search.query import Query
from redisvl.query.filter import FilterExpression, Num, Tag

from actors.adapters.redis_errors import redis_errors
from actors.adapters.vector_index.names import LABEL_KEY, as_text, tag_item
from actors.adapters.workflow_store import LABEL_TAGS, METADATA_TAGS
from actors.contract import Status
from actors.errors import PermanentError

MAX_PAGE = 200
TIE_SLACK = 64  # extra rows read per page so that items sharing the cursor's created_at can be skipped
RETURN = (
    "status",
    "created_at",
    "size_bytes",
    "content_type",
    "filename",
    "thumbnail_key",
    "width",
    "height",
)


@dataclass(frozen=True)
class Listed:
    """One image of a page, as the listing shows it."""

    image_id: str
    status: str
    created_at: float
    fields: dict[str, str]


def index_name(prefix: str) -> str:
    return f"{prefix}_records_idx"


def encode_cursor(created_at: float, image_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r}|{image_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The ``(created_at, image id)`` of a cursor; ``PermanentError`` (``bad_cursor``) for anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, image_id = text.partition("|")
        if not image_id:
            raise ValueError("no image id")
        return float(at), image_id
    except (ValueError, UnicodeDecodeError) as e:
        raise PermanentError(
            f"bad cursor {cursor[:40]!r}: use next_cursor of a page", code="bad_cursor"
        ) from e


def filter_expression(
    filters: Mapping[str, str], status: Status | None, before: float | None
) -> FilterExpression | str:
    """Status, metadata and label filters (``label`` filters the labels), and the cursor's time bound."""
    expr: FilterExpression | None = None
    clauses: list[FilterExpression] = []
    if status is not None:
        clauses.append(Tag("status") == status.value)
    for key, value in sorted(filters.items()):
        field = LABEL_TAGS if key == LABEL_KEY else METADATA_TAGS
        clauses.append(Tag(field) == tag_item(key, value))
    if before is not None:
        clauses.append(Num("created_at") <= before)
    for clause in clauses:
        expr = clause if expr is None else expr & clause
    return "*" if expr is None else expr


def order_page(
    rows: list[Listed], cursor: tuple[float, str] | None, limit: int
) -> tuple[list[Listed], Listed | None]:
    """Rows newest first (ties by id, descending), after the cursor; the page and its last row when more
    remain."""
    rows = sorted(rows, key=lambda r: (r.created_at, r.image_id), reverse=True)
    if cursor is not None:
        rows = [r for r in rows if (r.created_at, r.image_id) < cursor]
    page = rows[:limit]
    return page, (page[-1] if len(rows) > limit and page else None)


class RecordIndex:
    """The listing over one Redis client (the caller's: the gateway's, whose ACL user may use this index)."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._client = client
        self.prefix = prefix
        self.name = index_name(prefix)
        self._ensured = False

    async def ensure(self) -> None:
        """Create the index when it is missing (idempotent: any replica may)."""
        if self._ensured:
            return
        schema = [
            "created_at", "NUMERIC", "SORTABLE",
            "status", "TAG",
            METADATA_TAGS, "TAG", "SEPARATOR", ",", "CASESENSITIVE",
            LABEL_TAGS, "TAG", "SEPARATOR", ",", "CASESENSITIVE",
        ]  # fmt: skip
        with redis_errors("record index create"):
            try:
                await self._client.execute_command(
                    "FT.CREATE",
                    self.name,
                    "ON",
                    "HASH",
                    "PREFIX",
                    "1",
                    f"{self.prefix}:image:",
                    "SCHEMA",
                    *schema,
                )
            except redis.exceptions.ResponseError as e:
                if "already exists" not in str(e).lower():
                    raise
        self._ensured = True

    async def page(
        self,
        limit: int,
        cursor: str = "",
        status: Status | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> tuple[list[Listed], str | None]:
        """One page, newest first, and the cursor of the next (None on the last page)."""
        if not 1 <= limit <= MAX_PAGE:
            raise PermanentError(f"limit must be 1..{MAX_PAGE}", code="bad_limit")
        after = decode_cursor(cursor) if cursor else None
        await self.ensure()
        text = str(filter_expression(filters or {}, status, after[0] if after else None))
        query = (
            Query(text)
            .sort_by("created_at", asc=False)
            .return_fields(*RETURN)
            .paging(0, limit + 1 + TIE_SLACK)
            .dialect(2)
        )
        with redis_errors("record listing"):
            res = await self._client.ft(self.name).search(query)
        head = f"{self.prefix}:image:"
        rows = [_row(doc, head) for doc in res.docs]
        page, last = order_page(rows, after, limit)
        return page, (encode_cursor(last.created_at, last.image_id) if last else None)


def _row(doc: Any, key_prefix: str) -> Listed:
    """One document of redis-py's ``FT.SEARCH`` result as a row."""
    fields = {name: str(as_text(getattr(doc, name, "") or "")) for name in RETURN}
    image_id = str(as_text(doc.id))[len(key_prefix) :]
    return Listed(image_id, fields["status"], float(fields["created_at"] or 0.0), fields)


__all__ = [
    "MAX_PAGE",
    "Listed",
    "RecordIndex",
    "decode_cursor",
    "encode_cursor",
    "filter_expression",
    "order_page",
]
