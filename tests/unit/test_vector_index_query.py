"""The pure parts of the vector index adapter: tag encoding, filter expressions, scores, vector checks."""

from __future__ import annotations

import numpy as np
import pytest

from actors.adapters.redis_errors import redis_errors
from actors.adapters.vector_index import (
    VectorIndex,
    as_vector,
    distance_to_score,
    filter_expression,
    info_dim,
    is_missing_index,
    tag_item,
    tags_field,
)
from actors.errors import PermanentError, RetryableError


def test_tag_item_keeps_plain_pairs_readable() -> None:
    assert tag_item("color", "red") == "color=red"


@pytest.mark.parametrize(
    ("key", "value"),
    [("a,b", "c"), ("a", "b,c"), ("a=b", "c"), (" a ", "b "), ("k", "x|y"), ("ключ", "значение"), ("k", "")],
)
def test_tag_item_never_leaks_separator_equals_or_space(key: str, value: str) -> None:
    item = tag_item(key, value)
    k, v = item.split("=")  # exactly one raw '='
    assert "," not in item and " " not in item and "|" not in item
    assert k and (v or value == "")


def test_tag_items_of_different_pairs_differ() -> None:
    assert tag_item("a=b", "c") != tag_item("a", "b=c")


def test_tags_field_is_sorted_and_separated() -> None:
    assert tags_field({"b": "2", "a": "1"}) == "a=1,b=2"
    assert tags_field({}) == ""


def test_filter_expression_none_without_filters() -> None:
    assert filter_expression({}) is None
    assert filter_expression({}, exclude_id="") is None


def test_filter_expression_escapes_and_ands() -> None:
    expr = str(filter_expression({"color": "red", "place": "new york"}))
    assert "@tags:{color\\=red}" in expr
    assert "@tags:{place\\=new\\%20york}" in expr
    assert "@image_id" not in expr


def test_filter_expression_excludes_the_query_image() -> None:
    expr = str(filter_expression({"color": "red"}, exclude_id="img-1"))
    assert "@tags:{color\\=red}" in expr
    assert "-@image_id:{img\\-1}" in expr


def test_query_string_carries_filter_knn_window_and_ef_runtime() -> None:
    index = VectorIndex("redis://127.0.0.1:1/0", "t")
    q = index.build_query(np.ones(4, np.float32), 15, exclude_id="x", filters={"k": "v"}, ef_runtime=321)
    text = q.query_string()
    assert text.startswith("(")
    assert "@tags:{k\\=v}" in text and "-@image_id:{x}" in text
    assert "KNN 15 @embedding $vector EF_RUNTIME $EF" in text
    assert q.params["EF"] == 321


def test_query_uses_default_ef_runtime() -> None:
    q = VectorIndex("redis://127.0.0.1:1/0", "t", ef_runtime=250).build_query(np.ones(4, np.float32), 10)
    assert q.query_string().startswith("*=>[KNN 10")
    assert q.params["EF"] == 250


@pytest.mark.parametrize(("distance", "score"), [("0", 1.0), (0.25, 0.75), (b"1", 0.0), ("2", -1.0)])
def test_distance_to_score(distance: str | float | bytes, score: float) -> None:
    assert distance_to_score(distance) == pytest.approx(score)


def test_distance_to_score_clamps_rounding() -> None:
    assert distance_to_score("-1.2e-7") == 1.0


@pytest.mark.parametrize("bad", [[], [0.0, 0.0], [1.0, float("nan")], [1.0, float("inf")], [[1.0]], ["x"]])
def test_bad_vectors_are_permanent(bad: list) -> None:
    with pytest.raises(PermanentError):
        as_vector(bad)


def test_dimension_mismatch_is_permanent() -> None:
    with pytest.raises(PermanentError) as err:
        as_vector([1.0, 2.0], dim=3)
    assert err.value.code == "dimension_mismatch"


def test_names_are_per_model_and_checked() -> None:
    index = VectorIndex("redis://127.0.0.1:1/0", "p")
    assert index.index_name("clip") == "p_idx_clip"
    assert index.key("clip", "abc") == "p:vec:clip:abc"
    for bad_model in ("a:b", "", "a b", "*"):
        with pytest.raises(PermanentError):
            index.key_prefix(bad_model)
    with pytest.raises(PermanentError):
        index.key("clip", "a,b")


def test_info_dim_reads_ft_info_attributes() -> None:
    info = {
        "attributes": [
            ["identifier", "image_id", "attribute", "image_id", "type", "TAG"],
            ["identifier", "embedding", "attribute", "embedding", "type", "VECTOR", "dim", 512],
        ]
    }
    assert info_dim(info) == 512
    assert info_dim({}) == 0


def test_redis_errors_map_outages_to_retryable() -> None:
    import redis.exceptions

    with pytest.raises(RetryableError), redis_errors("x"):
        raise redis.exceptions.ConnectionError("refused")
    with pytest.raises(RetryableError), redis_errors("x"):
        raise redis.exceptions.BusyLoadingError("LOADING Redis is loading the dataset in memory")
    with pytest.raises(redis.exceptions.ResponseError), redis_errors("x"):
        raise redis.exceptions.ResponseError("Syntax error")


def test_missing_index_detection() -> None:
    assert is_missing_index(Exception("t_idx_m: no such index"))
    assert not is_missing_index(Exception("Syntax error"))
