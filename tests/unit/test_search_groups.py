"""Near-duplicate groups: connected components, cursor pages and pair sets (actors/duplicates.py)."""

from __future__ import annotations

import pytest

from actors.duplicates import DisjointSets, connected_components, page, pair_set


def test_components_follow_chains_and_drop_singletons() -> None:
    groups = connected_components(["a", "b", "c", "d", "e", "f"], [("a", "b"), ("c", "b"), ("e", "f")])
    assert groups == [["a", "b", "c"], ["e", "f"]]


def test_edges_are_undirected_and_self_loops_ignored() -> None:
    assert connected_components(["x", "y"], [("y", "x"), ("x", "y"), ("x", "x")]) == [["x", "y"]]
    assert connected_components(["x"], [("x", "x")]) == []


def test_edges_may_name_unlisted_nodes() -> None:
    assert connected_components(["a"], [("a", "z")]) == [["a", "z"]]


def test_groups_are_ordered_by_smallest_member() -> None:
    edges = [("q", "r"), ("m", "z"), ("b", "y")]
    assert [g[0] for g in connected_components([], edges)] == ["b", "m", "q"]


def test_disjoint_sets_long_chain() -> None:
    sets = DisjointSets()
    for i in range(1000):
        sets.union(f"{i:04d}", f"{i + 1:04d}")
    assert len(sets.groups()) == 1 and len(sets.groups()[0]) == 1001


def test_cursor_pages_cover_every_group_once() -> None:
    groups = [[f"{i:02d}", f"{i:02d}x"] for i in range(7)]
    seen, cursor, pages = [], "", 0
    while True:
        chunk, nxt = page(groups, cursor, 3)
        seen += chunk
        pages += 1
        if nxt is None:
            break
        cursor = nxt
    assert seen == groups and pages == 3


def test_cursor_is_stable_when_an_earlier_group_vanishes() -> None:
    groups = [["a", "a2"], ["c", "c2"], ["e", "e2"]]
    first, cursor = page(groups, "", 1)
    assert first == [["a", "a2"]] and cursor == "a"
    second, _ = page(groups[1:], cursor, 1)  # "a" was deleted between the two pages
    assert second == [["c", "c2"]]


def test_last_page_has_no_cursor_and_limit_must_be_positive() -> None:
    assert page([["a", "b"]], "", 1) == ([["a", "b"]], None)
    assert page([], "", 5) == ([], None)
    with pytest.raises(ValueError):
        page([], "", 0)


def test_pair_set() -> None:
    assert pair_set([["a", "b", "c"], ["d"]]) == {
        frozenset({"a", "b"}),
        frozenset({"a", "c"}),
        frozenset({"b", "c"}),
    }
