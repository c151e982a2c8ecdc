"""``GET /images/{id}/similar`` in one Redis round trip (``actors/adapters/vector_index/stored.py``,
``gateway/records.py``'s ``similar_hits``), without servers: the script's ``FT.SEARCH`` is the one ``query``
sends, its reply reads into the same hits, and every case the script leaves to the two-step way (read the state
and vector, then ``query``) gets the answer that way gave, 404 and 409 included.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from redis.commands.search.result import Result

from actors.adapters.vector_index import VectorIndex
from actors.adapters.vector_index.catalog import KnownIndex
from actors.adapters.vector_index.queries import knn_command, knn_query, page_of_hits, reply_hits
from actors.adapters.vector_index.stored import StoredHits
from actors.contract import Hit, MeshConfig, Status
from actors.errors import PermanentError
from gateway.deps import Services
from gateway.errors import ApiError
from gateway.records import SEARCHABLE_VALUES, similar_hits

DIM = 4
VEC = np.array([0.1, 0.2, 0.3, 0.4], np.float32)


@pytest.mark.parametrize(
    ("exclude", "filters"),
    [(None, None), ("img-1", None), ("img-1", {"color": "red", "place": "new york"}), (None, {"a": "b,c"})],
)
def test_the_scripts_search_is_the_one_query_sends(
    exclude: str | None, filters: dict[str, str] | None
) -> None:
    args, params = knn_command("t_idx_m", 15, 50, exclude, filters)
    q = knn_query(VEC, 15, 50, exclude, filters)
    assert args == ["t_idx_m", *q.get_args()]
    assert params | {"vector": VEC.tobytes()} == q.params  # the script adds the vector, first


def _reply(rows: list[tuple[str, str]]) -> list[Any]:
    """A raw RESP2 ``FT.SEARCH`` reply as the script answers it: total, then key and fields per document."""
    out: list[Any] = [len(rows)]
    for image_id, distance in rows:
        out += [
            f"t:vec:m:{image_id}".encode(),
            [b"image_id", image_id.encode(), b"vector_distance", distance.encode()],
        ]
    return out


@pytest.mark.parametrize(("offset", "k"), [(0, 3), (1, 2), (2, 5), (4, 1)])
def test_reply_hits_read_as_redis_pys_documents(offset: int, k: int) -> None:
    raw = _reply([("a", "0.0123"), ("b", "0.25"), ("c", "1"), ("d", "1.9999")])
    docs = Result(raw, True).docs
    assert reply_hits(raw, offset, k) == page_of_hits(docs, offset, k)
    assert [h.image_id for h in reply_hits(raw, 0, 4)] == ["a", "b", "c", "d"]


class FakeScript:
    """Stands for the registered script: answers what it is given, records the call."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        self.calls.append({"keys": keys, "args": args})
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _index(answer: Any, known: bool = True) -> tuple[VectorIndex, FakeScript]:
    index = VectorIndex("redis://127.0.0.1:1/0", "t")  # never connects
    if known:
        index._known["m"] = KnownIndex(cast(Any, None), DIM)
        index._loaded_at["m"] = float("inf")  # seen fully indexed
    script = FakeScript(answer)
    index._script = cast(Any, script)
    return index, script


async def _stored(index: VectorIndex, **kw: Any) -> StoredHits | None:
    args: dict[str, Any] = {"k": 2, "offset": 0, "exclude_id": "q", "ef_runtime": 50} | kw
    return await index.similar_to_stored("m", "t:image:q", "t:emb:m:q", SEARCHABLE_VALUES, **args)


async def test_one_script_call_reads_state_vector_and_hits() -> None:
    index, script = _index([b"done", VEC.tobytes(), _reply([("a", "0.1"), ("b", "0.2"), ("c", "0.3")])])
    found = await _stored(index, k=2, offset=1, filters={"color": "red"})
    assert found == StoredHits("done", True, [Hit(image_id="b", score=0.8), Hit(image_id="c", score=0.7)])
    (call,) = script.calls
    assert call["keys"] == ["t:image:q", "t:emb:m:q"]
    args, params = knn_command("t_idx_m", 3, 50, "q", {"color": "red"})
    assert call["args"] == [
        4 * DIM,
        "done indexed",
        len(args),
        *args,
        *[x for kv in params.items() for x in kv],
    ]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ([None, None], StoredHits(None, False, None)),  # no record
        ([b"pending", VEC.tobytes()], StoredHits("pending", True, None)),  # not searchable: not searched
        ([b"done", None], StoredHits("done", False, None)),  # no vector under the model
        ([b"done", b"\x00" * 6], StoredHits("done", True, None)),  # another size: not searched
        ([b"done", np.zeros(DIM, np.float32).tobytes(), _reply([])], StoredHits("done", True, None)),
        ([b"done", VEC.tobytes(), [1, b"k", [b"other", b"x"]]], StoredHits("done", True, None)),
    ],
)
async def test_what_the_script_cannot_answer_is_left_to_the_two_step_way(
    answer: list[Any], expected: StoredHits
) -> None:
    index, _ = _index(answer)
    assert await _stored(index) == expected


async def test_an_unknown_index_or_an_error_reply_reads_nothing() -> None:
    import redis.exceptions

    index, script = _index([b"done", VEC.tobytes(), _reply([])], known=False)
    assert await _stored(index) is None and not script.calls  # the first query of a model: FT.INFO first
    index, _ = _index(redis.exceptions.ResponseError("no such index"))
    assert await _stored(index) is None
    index, _ = _index(redis.exceptions.NoPermissionError("NOPERM"))
    assert await _stored(index) is None


async def test_pages_are_checked_as_query_checks_them() -> None:
    index, script = _index([b"done", VEC.tobytes(), _reply([])])
    with pytest.raises(PermanentError):
        await _stored(index, k=0)
    with pytest.raises(PermanentError):
        await _stored(index, ef_runtime=0)
    assert not script.calls


class FakeStore:
    def __init__(self, status: Status | None, vec: np.ndarray | None) -> None:
        self.answer = (status, vec)
        self.reads = 0

    def status_and_embedding_keys(self, image_id: str, model: str) -> tuple[str, str]:
        return f"t:image:{image_id}", f"t:emb:{model}:{image_id}"

    async def status_and_embedding(self, image_id: str, model: str) -> tuple[Status | None, Any]:
        self.reads += 1
        return self.answer


class FakeSearch:
    def __init__(self, stored: StoredHits | None, hits: list[Hit]) -> None:
        self.stored, self.hits = stored, hits
        self.queries: list[tuple[Any, ...]] = []

    async def similar_to_stored(self, *args: Any, **kw: Any) -> StoredHits | None:
        return self.stored

    async def query(self, model: str, vec: Any, k: int, **kw: Any) -> list[Hit]:
        self.queries.append((model, k, kw))
        return self.hits


CFG = MeshConfig(active_model="m", ef_runtime=50)
HITS = [Hit(image_id="a", score=0.9)]


def _svc(store: FakeStore, search: FakeSearch) -> Services:
    return cast(Services, SimpleNamespace(store=store, search=search))


async def test_similar_hits_answers_from_the_script_alone() -> None:
    store, search = FakeStore(Status.DONE, VEC), FakeSearch(StoredHits("done", True, HITS), [])
    assert await similar_hits(_svc(store, search), "q", CFG, 10, 0, {}) == ("m", HITS)
    assert store.reads == 0 and not search.queries


@pytest.mark.parametrize(
    ("stored", "status", "code"),
    [
        (StoredHits(None, False, None), None, 404),
        (StoredHits("pending", True, None), Status.PENDING, 409),
        (StoredHits("done", False, None), Status.DONE, 409),
    ],
)
async def test_similar_hits_says_404_and_409_as_before(
    stored: StoredHits, status: Status | None, code: int
) -> None:
    vec = None if stored.status == "done" else VEC
    for found in (stored, None):  # from the script, and the two-step way's own answer
        with pytest.raises(ApiError) as e:
            await similar_hits(_svc(FakeStore(status, vec), FakeSearch(found, HITS)), "q", CFG, 10, 0, {})
        assert e.value.status == code


@pytest.mark.parametrize("stored", [None, StoredHits("done", True, None)])
async def test_similar_hits_takes_the_two_step_way_for_the_rest(stored: StoredHits | None) -> None:
    store, search = FakeStore(Status.DONE, VEC), FakeSearch(stored, HITS)
    assert await similar_hits(_svc(store, search), "q", CFG, 7, 3, {"c": "r"}) == ("m", HITS)
    assert store.reads == 1
    assert search.queries == [
        ("m", 7, {"offset": 3, "exclude_id": "q", "filters": {"c": "r"}, "ef_runtime": 50})
    ]
