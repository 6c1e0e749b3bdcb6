"""The augmentation strategies as pure array functions (DESIGN section 2).

`xqg` folds generated-query embeddings into the passage embedding; `expand` appends the generated
queries to the passage text (doc2query-style); `multivector` keeps every vector as its own index
entry pointing back to the passage. All work on one part at a time, so they scale by parts.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.config import RunConfig
from xqg_ray.paths import RunPaths
from xqg_ray.schema import arrow_to_vectors, vectors_to_arrow
from xqg_ray.storage import PartitionedTable


def select_generated(
    generated: pa.Table, languages: list[str] | None, per_language: int | None
) -> pa.Table:
    """Keep the generated queries (texts or vectors) a strategy uses: languages, first n of each."""
    keep = pa.array([True] * generated.num_rows)
    if languages is not None:
        keep = pc.and_(keep, pc.is_in(generated["lang"], pa.array(languages)))
    if per_language is not None:
        keep = pc.and_(keep, pc.less(generated["k"], per_language))
    return generated.filter(keep)


def row_positions(pids: pa.Array | pa.ChunkedArray, passage_pids: list[str]) -> np.ndarray:
    """Position of each query's passage in the part; unknown passages are an error."""
    where = pc.index_in(pids, value_set=pa.array(passage_pids, type=pa.string()))
    if where.null_count:
        unknown = pc.filter(pids, pc.is_null(where))
        raise ValueError(f"generated queries for passages not in this part: {unknown[0]}")
    return np.asarray(where.to_numpy(zero_copy_only=False), dtype=np.int64)


def xqg_mix(
    passage_vectors: np.ndarray,
    query_vectors: np.ndarray,
    query_rows: np.ndarray,
    alpha: float,
    reduce: str = "sum",
) -> np.ndarray:
    """e'_p = (1 - alpha) e_p + alpha * reduce_j e_q_j, exactly the published formula.

    The paper sums (not averages) the query embeddings and does not normalise. A passage with no
    generated query gets (1 - alpha) e_p, what the formula gives for an empty sum; a real
    generator gives every passage the same count, so this only arises with a stand-in.
    """
    n, dim = passage_vectors.shape
    totals = np.zeros((n, dim), dtype=np.float64)
    np.add.at(totals, query_rows, query_vectors.astype(np.float64))
    counts = np.bincount(query_rows, minlength=n)
    if reduce == "mean":
        totals[counts > 0] /= counts[counts > 0, None]
    elif reduce != "sum":
        raise ValueError(f"unknown reduce {reduce!r}: use sum or mean")
    mixed = (1.0 - alpha) * passage_vectors.astype(np.float64) + alpha * totals
    return mixed.astype(np.float32)


def expand_text(text: str, queries: list[str]) -> str:
    """doc2query-style expansion: the passage text followed by its generated queries."""
    return " ".join([text, *queries]) if queries else text


def multivector_ids(passage_ids: np.ndarray, query_rows: np.ndarray, stride: int) -> np.ndarray:
    """Entry ids: passage id * stride + j (j = 0 for the passage, 1.. for its queries).

    Ids derive from the passage id alone, so any part can be computed without knowing the others,
    and `entry_id // stride` recovers the passage.
    """
    counts = np.bincount(query_rows, minlength=len(passage_ids))
    if counts.size and counts.max() >= stride:
        raise ValueError(f"a passage has {counts.max()} queries; the stride allows {stride - 1}")
    order = np.argsort(query_rows, kind="stable")
    rank = np.empty_like(order)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank[order] = np.arange(len(order)) - np.repeat(starts, counts)
    return passage_ids[query_rows] * stride + 1 + rank


class AugmentTask:
    """Builds one part of the `xqg` or `multivector` index entries from stored embeddings."""

    def __init__(self, cfg: RunConfig, strategy: str):
        if strategy not in ("xqg", "multivector"):
            raise ValueError(f"AugmentTask builds xqg or multivector, not {strategy!r}")
        paths = RunPaths(cfg.root)
        encoder = cfg.encoder.name
        self.cfg = cfg
        self.strategy = strategy
        self.passages = PartitionedTable(paths.embeddings(encoder, "passages"))
        self.generated = PartitionedTable(
            paths.embeddings(encoder, "generated-" + cfg.generator.name)
        )
        self.target = PartitionedTable(paths.embeddings(encoder, strategy))

    def build(self, passages: pa.Table, generated: pa.Table) -> pa.Table:
        augment = self.cfg.augment
        generated = select_generated(generated, augment.languages, augment.queries_per_language)
        passage_vectors = arrow_to_vectors(passages["vector"])
        query_vectors = arrow_to_vectors(generated["vector"]).reshape(-1, passage_vectors.shape[1])
        rows = row_positions(generated["pid"], passages["pid"].to_pylist())
        if self.strategy == "xqg":
            mixed = xqg_mix(passage_vectors, query_vectors, rows, augment.alpha, augment.reduce)
            return passages.select(["id", "pid"]).append_column("vector", vectors_to_arrow(mixed))
        stride = multivector_stride(self.cfg)
        passage_ids = passages["id"].to_numpy()
        ids = np.concatenate([passage_ids * stride, multivector_ids(passage_ids, rows, stride)])
        pids = pa.concat_arrays(
            [passages["pid"].combine_chunks(), pc.take(passages["pid"], rows).combine_chunks()]
        )
        vectors = np.concatenate([passage_vectors, query_vectors])
        order = np.argsort(ids, kind="stable")
        return pa.table(
            {
                "id": pa.array(ids[order], type=pa.int64()),
                "pid": pc.take(pids, pa.array(order)),
                "vector": vectors_to_arrow(vectors[order]),
            }
        )

    def __call__(self, part: str) -> dict:
        passages = self.passages.read_part(part)
        table = self.build(passages, self.generated.read_part(part))
        self.target.write_part(part, table)
        return {"part": part, "rows_in": passages.num_rows, "rows_out": table.num_rows}


def multivector_stride(cfg: RunConfig) -> int:
    """Entries per passage id block: the passage plus every query it can have (a power of ten)."""
    languages = cfg.augment.languages or cfg.generator.languages
    per_language = cfg.augment.queries_per_language or cfg.generator.queries_per_language
    needed = 1 + len(languages) * per_language
    return 10 ** len(str(needed))
