"""The pure rules of the near-duplicate groups kept at index time (``actors/duplicates.py``): which states the
config asks for, their names, when an unwanted one is retired, and how a group that lost an image splits."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from actors.contract import MeshConfig
from actors.duplicates import (
    connected_components,
    due_for_retirement,
    kept_fields,
    parse_state_field,
    split,
    state_field,
)


# --- names ----------------------------------------------------------------------------------------------------
def test_a_state_is_named_by_its_model_and_exact_threshold() -> None:
    assert state_field("efficientnet_lite0", 0.675) == "efficientnet_lite0|0.675"
    assert parse_state_field("efficientnet_lite0|0.675") == ("efficientnet_lite0", 0.675)
    # any other threshold, however close, is another state: never answered from this one
    assert state_field("m", 0.6750001) != state_field("m", 0.675)
    assert state_field("m", 1) == state_field("m", 1.0) == "m|1.0"
    for t in (0.01, 0.1 + 0.2, 0.9, 1.0):
        assert parse_state_field(state_field("clip.v2-b", t)) == ("clip.v2-b", t)


@pytest.mark.parametrize("field", ["", "m", "m|", "|0.5", "m|x", "m|0", "m|1.5", "m|-0.2", "m|nan"])
def test_a_name_it_never_wrote_is_not_a_state(field: str) -> None:
    assert parse_state_field(field) is None


# --- which states are kept ----------------------------------------------------------------------------------
def test_the_active_model_is_kept_at_the_configured_threshold() -> None:
    cfg = MeshConfig(active_model="a", near_duplicate_threshold=0.8)
    assert kept_fields(cfg) == ["a|0.8"]


def test_a_switch_keeps_the_next_model_too_so_its_groups_are_whole_at_the_swap() -> None:
    cfg = MeshConfig(active_model="a", next_model="b", near_duplicate_threshold=0.7)
    assert kept_fields(cfg) == ["a|0.7", "b|0.7"]
    # next == active: a swap half done, one state
    assert kept_fields(MeshConfig(active_model="a", next_model="a")) == [state_field("a", 0.675)]


def test_an_unwanted_state_is_retired_only_after_the_grace() -> None:
    kept = ["a|0.7", "a|0.8"]
    due, since = due_for_retirement(kept, ["a|0.8"], {}, now=100.0, grace_s=60.0)
    assert due == [] and since == {"a|0.7": 100.0}
    due, since = due_for_retirement(kept, ["a|0.8"], since, now=159.0, grace_s=60.0)
    assert due == [] and since == {"a|0.7": 100.0}
    due, since = due_for_retirement(kept, ["a|0.8"], since, now=160.0, grace_s=60.0)
    assert due == ["a|0.7"]


def test_a_state_wanted_again_within_the_grace_restarts_its_clock() -> None:
    kept = ["a|0.7", "b|0.7"]
    _, since = due_for_retirement(kept, ["b|0.7"], {}, now=0.0, grace_s=60.0)  # switched to b
    _, since = due_for_retirement(kept, ["a|0.7"], since, now=30.0, grace_s=60.0)  # and back
    assert since == {"b|0.7": 30.0}
    due, since = due_for_retirement(kept, ["b|0.7"], since, now=80.0, grace_s=60.0)  # to b again
    assert due == [] and since == {"a|0.7": 80.0}


def test_with_no_grace_an_unwanted_state_goes_at_once_and_a_wanted_one_never() -> None:
    due, since = due_for_retirement(["a|0.7", "a|0.8"], ["a|0.8"], {}, now=5.0, grace_s=0.0)
    assert due == ["a|0.7"] and "a|0.8" not in since


# --- splits ---------------------------------------------------------------------------------------------------
def test_a_group_that_lost_its_bridge_splits_largest_first() -> None:
    members = ["a", "a2", "c", "c2", "c3", "lone"]
    edges = [("a", "a2"), ("c", "c2"), ("c3", "c2")]
    assert split(members, edges) == [["c", "c2", "c3"], ["a", "a2"], ["lone"]]


def test_a_split_ignores_edges_to_images_outside_the_group() -> None:
    # a neighbour outside the group is in it already or will be joined by its own upsert: not the split's to add
    assert split(["a", "b"], [("a", "z"), ("z", "b")]) == [["a"], ["b"]]
    assert split(["a", "b"], [("b", "a"), ("a", "a")]) == [["a", "b"]]


def test_equal_components_are_ordered_by_their_smallest_id() -> None:
    assert split(["d", "c", "b", "a"], [("d", "c"), ("b", "a")]) == [["a", "b"], ["c", "d"]]
    assert split([], []) == []


def test_a_split_matches_the_components_of_what_is_left() -> None:
    """Against ``connected_components`` on random graphs: the same groups of two or more, and every member in
    exactly one part."""
    rng = random.Random(13)
    for _ in range(200):
        members = [f"i{n:02d}" for n in rng.sample(range(40), rng.randint(0, 25))]
        pairs = list(itertools.combinations(members, 2))
        edges = rng.sample(pairs, min(len(pairs), rng.randint(0, 30)))
        parts = split(members, edges)
        assert sorted(i for p in parts for i in p) == sorted(members)
        assert sorted(p for p in parts if len(p) > 1) == connected_components(members, edges)
        assert [len(p) for p in parts] == sorted((len(p) for p in parts), reverse=True)
        assert all(p == sorted(p) for p in parts)


async def test_an_upsert_into_an_index_still_being_scanned_waits_for_it_instead_of_failing() -> None:
    """The first upsert of a model creates its index; RediSearch answers "loading" while it scans. The join
    waits (the vector is written already: failing would make the coordinator process the image again)."""
    from actors.adapters.group_store import KeptState
    from actors.errors import RetryableError
    from actors.group_keeper import GroupKeeper

    class Index:
        def __init__(self) -> None:
            self.loading = 2

        async def query(self, *args: object, **kwargs: object) -> list[object]:
            if self.loading:
                self.loading -= 1
                raise RetryableError("the index is loading (0% indexed)", code="index_loading")
            return []

        def key_prefix(self, model: str) -> str:
            return f"p:vec:{model}:"

    class Store:
        def __init__(self) -> None:
            self.joined: list[str] = []

        async def states(self, model: str | None = None) -> list[KeptState]:
            return [KeptState(field="m|0.9", gen="1", model="m", threshold=0.9)]

        async def join(self, state: KeptState, head: str, image_id: str, neighbours: list[str]) -> int:
            self.joined.append(image_id)
            return 1

    index, store = Index(), Store()
    keeper = GroupKeeper(index, store)  # type: ignore[arg-type]
    await keeper.upserted("m", "img", np.zeros(4, dtype=np.float32))
    assert index.loading == 0 and store.joined == ["img"]
