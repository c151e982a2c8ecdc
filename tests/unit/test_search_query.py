"""The index does the filtering: the RediSearch queries the indexer builds for filtered and range searches."""

from __future__ import annotations

import numpy as np
import pytest

from actors.adapters.vector_index import VectorIndex, score_to_distance
from actors.errors import PermanentError

INDEX = VectorIndex("redis://127.0.0.1:1/0", "t")  # never connects: only builds queries


def test_knn_query_prefilters_every_metadata_filter() -> None:
    q = INDEX.build_query(np.ones(4, np.float32), 10, filters={"color": "red", "album": "a b"})
    text = q.query_string()
    pre, knn = text.split("=>", 1)
    # the filters are the KNN's pre-filter (before "=>"), ANDed: Redis ranks only matching documents
    assert "@tags:{color\\=red}" in pre and "@tags:{album\\=a\\%20b}" in pre
    assert knn.lstrip().startswith("[KNN 10")


def test_range_query_keeps_filters_exclusion_and_radius() -> None:
    q = INDEX.build_range_query(np.ones(4, np.float32), 25, 0.8, exclude_id="img-1", filters={"color": "red"})
    text = q.query_string()
    assert "VECTOR_RANGE $distance_threshold $vector" in text
    assert "@tags:{color\\=red}" in text and "-@image_id:{img\\-1}" in text
    assert "LIMIT 0 25" in str(q) and "SORTBY vector_distance ASC" in str(q)
    assert q.params["distance_threshold"] == pytest.approx(0.2)


def test_score_to_distance() -> None:
    assert score_to_distance(1.0) == 0.0
    assert score_to_distance(0.675) == pytest.approx(0.325)
    assert score_to_distance(-1.0) == 2.0
    with pytest.raises(PermanentError):
        score_to_distance(1.5)
