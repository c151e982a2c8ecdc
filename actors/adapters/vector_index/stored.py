"""``StoredSearch``: the KNN query by an image whose vector is stored in the same Redis (the Workflow DB's
embedding, ``GET /images/{id}/similar``), in one round trip instead of two.

A script reads the image's state and its vector and, when the state is searchable and the vector has the size
the index takes, runs the ``FT.SEARCH`` of ``queries.knn_command`` with that vector, all inside Redis: the
vector never travels to the caller and back before the search. The script answers the state, the vector and
the search's raw reply; the hits are read from it as ``VectorIndex.query`` reads its own (``reply_hits``).

Whatever the script cannot answer exactly as the two-step way (read the state and vector, then ``query``)
would, it leaves to that way: the first query of a model (its index not known yet), an index that may still be
loading, a vector of another size or one that is no fit for a cosine index, any error reply (a missing index,
a permission refused). ``StoredHits.hits`` is then None, and the caller takes the two-step way, which answers
those cases as it always has.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis.exceptions
from redis.commands.core import AsyncScript

from actors.adapters.redis_errors import redis_errors
from actors.adapters.vector_index.label_search import LabelSearch
from actors.adapters.vector_index.names import as_text
from actors.adapters.vector_index.queries import as_vector, knn_command, reply_hits
from actors.contract import Hit
from actors.errors import MeshError, PermanentError, RetryableError

# KEYS[1]: the image's record (a hash with ``status``), KEYS[2]: its vector (float32 bytes).
# ARGV[1]: the vector's size in bytes the index takes; ARGV[2]: the searchable states, space-separated;
# ARGV[3]: n, the number of FT.SEARCH arguments that follow (the index, the query, its options); then the query
# parameters other than the vector, as name value pairs. Answers {state, vector[, FT.SEARCH reply]}: the reply
# only when the search ran. A missing key reads as false, which goes out as a null.
_SIMILAR = """
local status = redis.call('HGET', KEYS[1], 'status')
local vec = redis.call('GET', KEYS[2])
if not status or not vec or string.len(vec) ~= tonumber(ARGV[1]) then
  return {status, vec}
end
local searchable = false
for s in string.gmatch(ARGV[2], '%S+') do
  if s == status then searchable = true end
end
if not searchable then
  return {status, vec}
end
local n = tonumber(ARGV[3])
local args = {}
for i = 4, 3 + n do args[#args + 1] = ARGV[i] end
args[#args + 1] = 'PARAMS'
args[#args + 1] = tostring(#ARGV - 3 - n + 2)
args[#args + 1] = 'vector'
args[#args + 1] = vec
for i = 4 + n, #ARGV do args[#args + 1] = ARGV[i] end
return {status, vec, redis.call('FT.SEARCH', unpack(args))}
"""


@dataclass(frozen=True, slots=True)
class StoredHits:
    """What ``similar_to_stored`` read: the image's state (None: no record), whether it has a vector under the
    model, and the hits (None: not searched here; the caller asks the two-step way)."""

    status: str | None
    has_vector: bool
    hits: list[Hit] | None


class StoredSearch(LabelSearch):
    """The per-model indexes, searched by a stored image's vector in one round trip."""

    _script: AsyncScript | None = None  # registered on first use; redis-py loads it into Redis when missing

    def check_page(self, k: int, offset: int, ef_runtime: int | None) -> None:
        """``PermanentError`` for a page or an EF_RUNTIME no query takes (``bad_k``, ``bad_ef_runtime``)."""
        if k < 1 or offset < 0 or k + offset > self.max_window:
            raise PermanentError(f"need k >= 1, offset >= 0, k + offset <= {self.max_window}", code="bad_k")
        if ef_runtime is not None and not 1 <= ef_runtime <= 100_000:
            raise PermanentError("ef_runtime must be in 1..100000", code="bad_ef_runtime")

    async def similar_to_stored(
        self,
        model: str,
        record_key: str,
        vector_key: str,
        searchable: Collection[str],
        k: int,
        offset: int = 0,
        exclude_id: str | None = None,
        filters: Mapping[str, str] | None = None,
        ef_runtime: int | None = None,
    ) -> StoredHits | None:
        """The ``k`` nearest images after ``offset`` to the vector at ``vector_key``, searched only when the
        record at ``record_key`` has one of the ``searchable`` states; best first, as ``query`` ranks them.

        None when nothing was read here (the model's index not known yet or loading, an error reply);
        ``StoredHits.hits`` None when the search did not run or its answer is left to ``query``.
        """
        self.check_page(k, offset, ef_runtime)
        known = self._known.get(model)
        if known is None or not await self._loaded(model):
            return None
        args, params = knn_command(
            self.index_name(model), k + offset, ef_runtime or self.ef_runtime, exclude_id or None, filters
        )
        argv: list[Any] = [4 * known.dim, " ".join(searchable), len(args), *args]
        for name, value in params.items():
            argv += [name, value]
        if self._script is None:
            self._script = self._client.register_script(_SIMILAR)
        try:
            with redis_errors("query"):
                raw = await self._script(keys=[record_key, vector_key], args=argv)
        except redis.exceptions.ResponseError:  # a missing index, a refusal...: the two-step way answers it
            return None
        status = None if raw[0] is None else as_text(raw[0])
        if status is None or len(raw) < 3:
            return StoredHits(status, raw[1] is not None, None)
        try:  # a vector the two-step way refuses (NaN, zeros), or a reply it cannot read: it says what
            as_vector(np.frombuffer(raw[1], dtype=np.float32), known.dim)
            return StoredHits(status, True, reply_hits(raw[2], offset, k))
        except (MeshError, LookupError, TypeError, ValueError):
            return StoredHits(status, True, None)

    async def _loaded(self, model: str) -> bool:
        """Whether the model's index is fully indexed (checked when the check is due); False while it loads:
        the two-step way then answers as it always has (404 and 409 before the 503)."""
        if self._loaded_recently(model):
            return True
        try:
            await self._refuse_while_loading(model)
        except RetryableError:
            return False
        return True
