"""The strategies' arithmetic (docs/architecture.md), checked against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from xqg_ray.config import RunConfig
from xqg_ray.schema import GENERATED, arrow_to_vectors, vectors_to_arrow
from xqg_ray.stages.augment import (
    expand_text,
    multivector_ids,
    multivector_stride,
    row_positions,
    select_generated,
    xqg_mix,
)

P = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=np.float32)
Q = np.array([[10.0, 0.0], [0.0, 10.0], [4.0, 4.0]], dtype=np.float32)
ROWS = np.array([0, 0, 1])  # passage 0 has two queries, passage 1 one, passage 2 none


def test_xqg_sum_as_published():
    mixed = xqg_mix(P, Q, ROWS, alpha=0.5, reduce="sum")
    # passage 0: 0.5*[1,0] + 0.5*([10,0]+[0,10]) = [5.5, 5]
    # passage 1: 0.5*[0,2] + 0.5*[4,4] = [2, 3]
    # passage 2: no queries -> the formula's (1 - alpha) * [3, 3]
    np.testing.assert_allclose(mixed, [[5.5, 5.0], [2.0, 3.0], [1.5, 1.5]])
    assert mixed.dtype == np.float32


def test_xqg_mean_option():
    mixed = xqg_mix(P, Q, ROWS, alpha=0.5, reduce="mean")
    # passage 0: 0.5*[1,0] + 0.5*[5,5] = [3, 2.5]
    np.testing.assert_allclose(mixed[0], [3.0, 2.5])
    np.testing.assert_allclose(mixed[1], [2.0, 3.0])


def test_xqg_alpha_zero_is_dense_and_default_alpha_is_small():
    np.testing.assert_array_equal(xqg_mix(P, Q, ROWS, alpha=0.0), P)
    assert RunConfig().augment.alpha == 0.01
    with pytest.raises(ValueError, match="unknown reduce"):
        xqg_mix(P, Q, ROWS, alpha=0.1, reduce="max")


def test_multivector_ids_point_back_to_passages():
    passage_ids = np.array([7, 8, 9], dtype=np.int64)
    ids = multivector_ids(passage_ids, ROWS, stride=10)
    assert ids.tolist() == [71, 72, 81]
    assert (ids // 10).tolist() == [7, 7, 8]
    with pytest.raises(ValueError, match="stride allows 1"):
        multivector_ids(passage_ids, ROWS, stride=2)


def test_multivector_stride_covers_every_query():
    cfg = RunConfig.model_validate(
        {"generator": {"languages": ["ar", "de"], "queries_per_language": 5}}
    )
    assert multivector_stride(cfg) == 100  # 1 + 2*5 = 11 entries -> next power of ten


def test_expand_and_selection():
    assert expand_text("Paris is big.", ["where is paris?", "how big?"]) == (
        "Paris is big. where is paris? how big?"
    )
    assert expand_text("alone", []) == "alone"
    generated = pa.table(
        {
            "pid": ["a", "a", "a", "b"],
            "lang": ["ar", "ar", "de", "de"],
            "k": [0, 1, 0, 0],
            "text": ["q1", "q2", "q3", "q4"],
        },
        schema=GENERATED,
    )
    kept = select_generated(generated, ["ar"], 1)
    assert kept["text"].to_pylist() == ["q1"]
    assert select_generated(generated, None, None).num_rows == 4


def test_row_positions_rejects_foreign_passages():
    assert row_positions(pa.array(["b", "a", "b"]), ["a", "b"]).tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="not in this part: z"):
        row_positions(pa.array(["a", "z"]), ["a", "b"])


def test_vector_column_round_trip():
    back = arrow_to_vectors(pa.chunked_array([vectors_to_arrow(P[:2]), vectors_to_arrow(P[2:])]))
    np.testing.assert_array_equal(back, P)
