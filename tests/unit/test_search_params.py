"""Query parameters of the search routes: metadata filters and result pages (gateway/params.py)."""

from __future__ import annotations

import pytest

from actors.contract import MeshConfig
from gateway.errors import ApiError
from gateway.params import MAX_FILTERS, MAX_OFFSET, page_size, parse_filters


def test_filters_split_on_the_first_colon() -> None:
    assert parse_filters(["color:red", "album:2024:summer", "n:3"]) == {
        "color": "red",
        "album": "2024:summer",
        "n": "3",
    }


def test_no_filters_is_empty_and_empty_value_is_allowed() -> None:
    assert parse_filters([]) == {}
    assert parse_filters(["note:"]) == {"note": ""}


def test_repeating_the_same_pair_is_harmless() -> None:
    assert parse_filters(["a:1", "a:1"]) == {"a": "1"}


@pytest.mark.parametrize(
    "raw",
    [["nocolon"], [":red"], ["bad key:x"], ["k" * 65 + ":x"], ["a:1", "a:2"], ["k:" + "v" * 1025]],
)
def test_bad_filters_are_400(raw: list[str]) -> None:
    with pytest.raises(ApiError) as e:
        parse_filters(raw)
    assert (e.value.status, e.value.code) == (400, "bad_filter")


def test_too_many_filters() -> None:
    with pytest.raises(ApiError) as e:
        parse_filters([f"k{i}:v" for i in range(MAX_FILTERS + 1)])
    assert e.value.code == "bad_filter"


def test_page_size_defaults_and_clamps_to_max_k() -> None:
    cfg = MeshConfig(default_k=10, max_k=100)
    assert page_size(None, 0, cfg) == 10
    assert page_size(5, 0, cfg) == 5
    assert page_size(1000, 0, cfg) == 100


def test_page_beyond_the_window_is_400() -> None:
    cfg = MeshConfig(max_k=100)
    assert page_size(10, MAX_OFFSET - 10, cfg) == 10
    for offset in (-1, MAX_OFFSET - 5):
        with pytest.raises(ApiError) as e:
            page_size(10, offset, cfg)
        assert (e.value.status, e.value.code) == (400, "bad_page")
