"""Ingest: dataset files -> `corpus/{passages,queries,qrels}` under the run root.

Large passage files (generic Parquet, XOR-TyDi's TSV or JSON Lines) are streamed: each block is
read, checked and written as one corpus part, so the driver holds one block, a 64-bit hash per
passage id (to find duplicates across blocks) and the qrels, never the corpus' id column. Small
datasets (XQuAD, XQuAD-R) and `max_passages` cuts (a cut by passage group needs the whole table)
load whole. Both paths write the same tables (tested).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.config import DatasetConfig, RunConfig
from xqg_ray.errors import ConfigError
from xqg_ray.paths import RunPaths
from xqg_ray.stages import plan
from xqg_ray.storage import PartitionedTable, write_table

INGEST_BLOCK = 25_000  # passages per block (and corpus part) of a streamed ingest: a 100k block
# peaked the driver 250 MB higher (decoded block, its Parquet bytes and checks, allocator retention)
TABLES = ("passages", "queries", "qrels")


def ingest(cfg: RunConfig) -> dict[str, int]:
    """Dataset files -> corpus tables under the run root (skipped when already complete)."""
    from xqg_ray.datasets import load_corpus

    paths = RunPaths(cfg.root)
    if all(PartitionedTable(paths.corpus(t)).is_complete() for t in TABLES):
        return {t: PartitionedTable(paths.corpus(t)).manifest()["rows"] for t in TABLES}
    if streams(cfg.dataset):
        return stream_ingest(cfg)
    corpus = load_corpus(cfg.dataset)
    meta = {"dataset": cfg.dataset.model_dump()}
    return {
        name: write_table(paths.corpus(name), getattr(corpus, name), meta=meta)["rows"]
        for name in TABLES
    }


def streams(dataset: DatasetConfig) -> bool:
    """Whether ingest streams the passages: generic Parquet or XOR-TyDi, with no
    `max_passages` cut."""
    from xqg_ray.datasets.readers import file_format

    if dataset.max_passages or not dataset.passages:
        return False
    if dataset.name == "xor_tydi":
        return bool(dataset.queries)
    return dataset.name == "generic" and file_format(dataset.passages) == "parquet"


def passage_blocks(dataset: DatasetConfig, block_rows: int) -> Iterator[pa.Table]:
    """The dataset's passages, block by block, each checked as the whole-file readers do."""
    if dataset.name == "xor_tydi":
        from xqg_ray.datasets.xor_tydi import iter_passage_blocks

        return iter_passage_blocks(dataset.passages, "en", block_rows)
    from xqg_ray.datasets.generic import iter_parquet_passages

    return iter_parquet_passages(dataset.passages, block_rows)


def read_queries_and_qrels(dataset: DatasetConfig) -> tuple[pa.Table, pa.Table]:
    """The (small) queries and qrels, read whole; qrels pids are checked while streaming."""
    from xqg_ray.datasets import corpus as corpus_tables

    if dataset.name == "xor_tydi":
        from xqg_ray.datasets.xor_tydi import read_queries

        return read_queries(dataset.queries), corpus_tables.empty_table("qrels")
    from xqg_ray.datasets.generic import read_records, read_trec_qrels

    if dataset.qrels and not dataset.queries:
        raise ConfigError(f"{dataset.qrels}: qrels need a queries file")
    queries = (
        read_records(dataset.queries, "queries")
        if dataset.queries
        else corpus_tables.empty_table("queries")
    )
    qrels = (
        read_trec_qrels(dataset.qrels, set(queries["qid"].to_pylist()), None)
        if dataset.qrels
        else corpus_tables.empty_table("qrels")
    )
    return queries, qrels


def stream_ingest(cfg: RunConfig) -> dict[str, int]:
    """Streamed passages -> `corpus/passages` part by part; the same tables (rows, order,
    checks, language cut) as `load_corpus`, in other part sizes."""
    from xqg_ray.datasets.corpus import UniqueIds
    from xqg_ray.datasets.generic import unknown_pid_error

    paths = RunPaths(cfg.root)
    dataset = cfg.dataset
    meta = {"dataset": dataset.model_dump()}
    languages = dataset.languages
    cut_passages = languages is not None and dataset.name == "generic"  # XOR-TyDi keeps all
    wanted = pa.array(languages or [], pa.string())
    queries, qrels = read_queries_and_qrels(dataset)
    judged = qrels["pid"].combine_chunks()
    found = np.zeros(len(judged), bool)  # qrels pids seen among the passages
    kept = np.zeros(len(judged), bool)  # ... among the passages the language cut keeps
    unique = UniqueIds("pid", dataset.passages)
    target = PartitionedTable(paths.corpus("passages"))
    records, present = {}, set()
    for number, block in enumerate(passage_blocks(dataset, INGEST_BLOCK)):
        unique.add(block["pid"])
        found |= pc.is_in(judged, value_set=block["pid"]).to_numpy(zero_copy_only=False)
        present.update(pc.unique(block["lang"]).to_pylist())
        if cut_passages:
            block = block.filter(pc.is_in(block["lang"], value_set=wanted))
        kept |= pc.is_in(judged, value_set=block["pid"]).to_numpy(zero_copy_only=False)
        records[plan.part_name(number)] = target.write_part(plan.part_name(number), block)
    unique.check(lambda: (b["pid"] for b in passage_blocks(dataset, INGEST_BLOCK)))
    if not found.all():
        raise unknown_pid_error(dataset.qrels, judged[int(np.argmin(found))].as_py())
    if languages is not None:
        available = sorted(present | set(queries["lang"].to_pylist()))
        unknown = [lang for lang in languages if lang not in available]
        if unknown:
            raise ConfigError(f"dataset.languages: {unknown} not in the corpus (has {available})")
        queries = queries.filter(pc.is_in(queries["lang"], value_set=wanted))
        if qrels.num_rows:  # as `Corpus.restrict`: only judged queries stay
            judged_query = pc.is_in(qrels["qid"], value_set=queries["qid"].combine_chunks())
            qrels = qrels.filter(pc.and_(pa.array(kept), judged_query))
            queries = queries.filter(
                pc.is_in(queries["qid"], value_set=qrels["qid"].combine_chunks())
            )
    passages = target.finalize(meta=meta, expected=sorted(records), records=records)
    return {
        "passages": passages["rows"],
        "queries": write_table(paths.corpus("queries"), queries, meta=meta)["rows"],
        "qrels": write_table(paths.corpus("qrels"), qrels, meta=meta)["rows"],
    }
