"""Arrow schemas of the run-root tables: one definition that every stage reads and writes."""

from __future__ import annotations

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
