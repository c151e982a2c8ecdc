"""``LabelSearch``: text search by labels in a model's index (``GET /search`` in ``labels`` mode).

An image's labels are ``label=<name>`` items of its ``tags`` field and their scores a ``label_scores`` field
(``names``); one ``FT.SEARCH`` finds the images that have any of the labels a query named, and they are ranked
here by the summed score of those labels (``queries.rank_by_labels``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis.exceptions

from actors.adapters.redis_errors import redis_errors
from actors.adapters.vector_index.catalog import IndexCatalog
from actors.adapters.vector_index.names import is_missing_index
from actors.adapters.vector_index.queries import label_query, rank_by_labels
from actors.contract import Hit
from actors.errors import PermanentError

LABEL_WINDOW = 10_000  # a label search ranks at most this many matching images (LabelHits.truncated)


@dataclass(frozen=True)
class LabelHits:
    """A page of a label search, and how many images have any of the labels (``truncated``: more than
    ``LABEL_WINDOW``; only that many, in the index's order, were ranked)."""

    hits: list[Hit]
    matched: int
    truncated: bool


class LabelSearch(IndexCatalog):
    """The per-model indexes, searched by label."""

    async def label_search(
        self,
        model: str,
        names: Sequence[str],
        k: int,
        offset: int = 0,
        filters: Mapping[str, str] | None = None,
    ) -> LabelHits:
        """The images with any of the labels ``names``, ranked by the summed score of those labels, paged;
        empty when the model has no index yet or ``names`` is empty."""
        if k < 1 or offset < 0 or k + offset > self.max_window:
            raise PermanentError(f"need k >= 1, offset >= 0, k + offset <= {self.max_window}", code="bad_k")
        known = await self._index(model)
        if known is None or not names:
            return LabelHits([], 0, False)
        await self._refuse_while_loading(model)
        q = label_query(names, LABEL_WINDOW, filters)
        with redis_errors("label_search"):
            try:
                res = await self._client.ft(self.index_name(model)).search(q, query_params=q.params)
            except redis.exceptions.ResponseError as e:
                if is_missing_index(e):
                    self._forget(model)
                    return LabelHits([], 0, False)
                raise
        ranked = rank_by_labels(res.docs, names)
        return LabelHits(ranked[offset : offset + k], int(res.total), int(res.total) > len(res.docs))
