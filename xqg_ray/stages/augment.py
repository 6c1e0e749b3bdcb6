"""The augmentation strategies as pure array functions (docs/architecture.md, "Data flow").

`xqg` folds generated-query embeddings into the passage embedding; `expand` appends the generated
queries to the passage text (doc2query-style); `multivector` keeps every vector as its own index
entry pointing back to the passage. All work on one part at a time, so they scale by parts.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.config import RunConfig
from xqg_ray.paths import RunPaths, generated_sums, generated_vectors
from xqg_ray.schema import arrow_to_vectors, vectors_to_arrow
from xqg_ray.stages.runner import part_result
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
    return mix_from_sums(passage_vectors, totals, counts, alpha, reduce)


def mix_from_sums(
    passage_vectors: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
    alpha: float,
    reduce: str = "sum",
) -> np.ndarray:
    """`xqg_mix` from each passage's query sum and count (float64 arithmetic, float32 out): what
    re-mixing reads, so any alpha and sum/mean is computed without the per-query vectors."""
    totals = np.array(sums, dtype=np.float64, copy=True)
    counts = np.asarray(counts)
    if reduce == "mean":
        totals[counts > 0] /= counts[counts > 0, None]
    elif reduce != "sum":
        raise ValueError(f"unknown reduce {reduce!r}: use sum or mean")
    mixed = (1.0 - alpha) * passage_vectors.astype(np.float64) + alpha * totals
    return mixed.astype(np.float32)


def language_sums(passages: pa.Table, generated: pa.Table, query_vectors: np.ndarray) -> pa.Table:
    """Per passage and language: the sum (float32, accumulated in float64) and count of the
    generated-query vectors; rows sorted by (passage id, language), languages without queries
    left out. `generated` holds the rows of `query_vectors` (pid, lang)."""
    schema = sums_schema(query_vectors.shape[1] if query_vectors.ndim == 2 else 0)
    if generated.num_rows == 0:
        return schema.empty_table()
    rows = row_positions(generated["pid"], passages["pid"].to_pylist())
    langs = generated["lang"].combine_chunks().dictionary_encode()
    names = langs.dictionary.to_pylist()
    order = sorted(range(len(names)), key=names.__getitem__)
    rank = np.empty(len(names), np.int64)
    rank[order] = np.arange(len(names))
    lang_rank = rank[langs.indices.to_numpy(zero_copy_only=False)]
    keys = rows * len(names) + lang_rank
    unique, inverse = np.unique(keys, return_inverse=True)
    totals = np.zeros((len(unique), query_vectors.shape[1]), dtype=np.float64)
    np.add.at(totals, inverse, query_vectors.astype(np.float64))
    counts = np.bincount(inverse, minlength=len(unique)).astype(np.int32)
    passage_rows = unique // len(names)
    sorted_names = [names[i] for i in order]
    return pa.table(
        {
            "id": pa.array(passages["id"].to_numpy()[passage_rows], pa.int64()),
            "pid": pc.take(passages["pid"], pa.array(passage_rows)),
            "lang": pa.array([sorted_names[r] for r in unique % len(names)], pa.string()),
            "count": pa.array(counts, pa.int32()),
            "vector": vectors_to_arrow(totals.astype(np.float32)),
        },
        schema=schema,
    )


def sums_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("id", pa.int64()),
            ("pid", pa.string()),
            ("lang", pa.string()),
            ("count", pa.int32()),
            ("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def passage_sums(
    passages: pa.Table, sums: pa.Table, languages: list[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Each passage's (sum, count) over the chosen languages of a per-language sums table,
    aligned with `passages` rows: float64 (n, dim) and int64 (n,)."""
    if languages is not None:
        sums = sums.filter(pc.is_in(sums["lang"], pa.array(languages, pa.string())))
    n = passages.num_rows
    dim = sums.schema.field("vector").type.list_size
    totals = np.zeros((n, dim), dtype=np.float64)
    counts = np.zeros(n, dtype=np.int64)
    if sums.num_rows:
        rows = row_positions(sums["pid"], passages["pid"].to_pylist())
        np.add.at(totals, rows, arrow_to_vectors(sums["vector"]).astype(np.float64))
        np.add.at(counts, rows, sums["count"].to_numpy())
    return totals, counts


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


def sums_name(cfg: RunConfig) -> str:
    """`embeddings/<encoder>/<this>/`: per passage and language, the generated queries' sum."""
    return generated_sums(cfg.generator.name)


def sums_meta(cfg: RunConfig) -> dict:
    """What the sums depend on: the encoder, the generator and the queries kept per language."""
    return {
        "encoder": cfg.encoder.model_dump(),
        "generator": cfg.generator.model_dump(),
        "queries_per_language": cfg.augment.queries_per_language,
    }


class AugmentTask:
    """Builds one part of the `xqg` or `multivector` index entries from stored embeddings.

    `xqg` is normally written by the encoder actor as it encodes the generated queries
    (`EncodeTask`, kind `generated`); this task re-mixes it from the per-language sums when
    only the mixing changed, so nothing is re-encoded. `multivector` reads the per-query
    vectors, which the encoder writes only when multivector is requested."""

    def __init__(self, cfg: RunConfig, strategy: str):
        if strategy not in ("xqg", "multivector"):
            raise ValueError(f"AugmentTask builds xqg or multivector, not {strategy!r}")
        paths = RunPaths(cfg.root)
        encoder = cfg.encoder.name
        self.cfg = cfg
        self.strategy = strategy
        self.passages = PartitionedTable(paths.embeddings(encoder, "passages"))
        source = sums_name(cfg) if strategy == "xqg" else generated_vectors(cfg.generator.name)
        self.generated = PartitionedTable(paths.embeddings(encoder, source))
        self.target = PartitionedTable(paths.embeddings(encoder, strategy))

    def build(self, passages: pa.Table, generated: pa.Table) -> pa.Table:
        augment = self.cfg.augment
        passage_vectors = arrow_to_vectors(passages["vector"])
        if self.strategy == "xqg":
            totals, counts = passage_sums(passages, generated, augment.languages)
            mixed = mix_from_sums(passage_vectors, totals, counts, augment.alpha, augment.reduce)
            return passages.select(["id", "pid"]).append_column("vector", vectors_to_arrow(mixed))
        return multivector_entries(self.cfg, passages, generated)

    def __call__(self, part: str) -> dict:
        passages = self.passages.read_part(part)
        table = self.build(passages, self.generated.read_part(part))
        record = self.target.write_part(part, table)
        return part_result(part, passages.num_rows, table.num_rows, {self.target.url: record})


def _part_vectors(
    cfg: RunConfig, passages: pa.Table, generated: pa.Table
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A part's passage vectors, its selected generated-query vectors, and each query's
    passage row."""
    augment = cfg.augment
    generated = select_generated(generated, augment.languages, augment.queries_per_language)
    passage_vectors = arrow_to_vectors(passages["vector"])
    query_vectors = arrow_to_vectors(generated["vector"]).reshape(-1, passage_vectors.shape[1])
    rows = row_positions(generated["pid"], passages["pid"].to_pylist())
    return passage_vectors, query_vectors, rows


def xqg_entries(cfg: RunConfig, passages: pa.Table, generated: pa.Table) -> pa.Table:
    """A part's xqg entries from its passage vectors and generated-query vectors (`vector`)."""
    passage_vectors, query_vectors, rows = _part_vectors(cfg, passages, generated)
    mixed = xqg_mix(passage_vectors, query_vectors, rows, cfg.augment.alpha, cfg.augment.reduce)
    return passages.select(["id", "pid"]).append_column("vector", vectors_to_arrow(mixed))


def multivector_entries(cfg: RunConfig, passages: pa.Table, generated: pa.Table) -> pa.Table:
    """A part's multivector entries: each passage vector and each of its queries' vectors."""
    passage_vectors, query_vectors, rows = _part_vectors(cfg, passages, generated)
    stride = multivector_stride(cfg)
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


def multivector_stride(cfg: RunConfig) -> int:
    """Entries per passage id block: the passage plus every query it can have (a power of ten)."""
    languages = cfg.augment.languages or cfg.generator.languages
    per_language = cfg.augment.queries_per_language or cfg.generator.queries_per_language
    needed = 1 + len(languages) * per_language
    return 10 ** len(str(needed))
