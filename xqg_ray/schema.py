"""Arrow schemas of the run-root tables: one definition that every stage reads and writes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

PASSAGES = pa.schema(
    [
        ("pid", pa.string()),
        ("lang", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
    ]
)

QUERIES = pa.schema(
    [
        ("qid", pa.string()),
        ("lang", pa.string()),
        ("text", pa.string()),
    ]
)

QRELS = pa.schema(
    [
        ("qid", pa.string()),
        ("pid", pa.string()),
        ("relevance", pa.int32()),
    ]
)

GENERATED = pa.schema(
    [
        ("pid", pa.string()),
        ("lang", pa.string()),
        ("k", pa.int32()),
        ("text", pa.string()),
    ]
)


def embeddings_schema(dim: int) -> pa.Schema:
    """Embedding rows: a global int64 id, the passage (or query) id it belongs to, the vector."""
    return pa.schema(
        [
            ("id", pa.int64()),
            ("pid", pa.string()),
            ("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def vectors_to_arrow(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """An (n, dim) float32 matrix as a fixed-size-list column, without copying row by row."""
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def arrow_to_vectors(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list column back to an (n, dim) float32 matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    dim = column.type.list_size
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(
        -1, dim
    )
