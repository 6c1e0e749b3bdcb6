"""Batch search: every evaluation query against a strategy's index, as a ranked run table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from xqg_ray.config import RunConfig
from xqg_ray.index.search import ShardedSearcher
from xqg_ray.paths import RunPaths
from xqg_ray.schema import arrow_to_vectors
from xqg_ray.storage import PartitionedTable, write_bytes_atomic

RUN_SCHEMA = pa.schema(
    [("qid", pa.string()), ("pid", pa.string()), ("score", pa.float32()), ("rank", pa.int32())]
)


def run_table(qids: list[str], scores: np.ndarray, pids: list[list[str | None]]) -> pa.Table:
    """Flatten (n, k) results to run rows; slots a short index could not fill (-1) are dropped."""
    out_qid, out_pid, out_score, out_rank = [], [], [], []
    for qid, row_scores, row_pids in zip(qids, scores, pids, strict=True):
        rank = 0
        for score, pid in zip(row_scores, row_pids, strict=True):
            if pid is None:
                continue
            rank += 1
            out_qid.append(qid)
            out_pid.append(pid)
            out_score.append(float(score))
            out_rank.append(rank)
    return pa.table([out_qid, out_pid, out_score, out_rank], schema=RUN_SCHEMA)


def search_queries(cfg: RunConfig, strategy: str, chunk: int = 4096) -> pa.Table:
    """All evaluation queries against the strategy's index, `search.depth` deep."""
    paths = RunPaths(cfg.root)
    queries = PartitionedTable(paths.embeddings(cfg.encoder.name, "queries")).read()
    searcher = ShardedSearcher(paths.index(cfg.encoder.name, strategy))
    vectors = arrow_to_vectors(queries["vector"])
    qids = queries["qid"].to_pylist()
    tables = []
    for start in range(0, len(qids), chunk):
        scores, ids = searcher.search(vectors[start : start + chunk], cfg.search.depth)
        tables.append(run_table(qids[start : start + chunk], scores, searcher.pids(ids)))
    return pa.concat_tables(tables)


def trec_run_text(run: pa.Table, tag: str) -> str:
    """The run in TREC format (`qid Q0 pid rank score tag`), readable by trec_eval and Pyserini."""
    lines = [
        f"{qid} Q0 {pid} {rank} {score:.6f} {tag}"
        for qid, pid, rank, score in zip(
            run["qid"].to_pylist(),
            run["pid"].to_pylist(),
            run["rank"].to_pylist(),
            run["score"].to_pylist(),
            strict=True,
        )
    ]
    return "\n".join(lines) + "\n"


def write_trec_run(url: str, run: pa.Table, tag: str) -> None:
    write_bytes_atomic(url, trec_run_text(run, tag).encode("utf-8"))
