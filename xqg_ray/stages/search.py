"""Batch search: evaluation queries against an index, as a ranked run table.

`IndexSearcher` is the Ray Data callable class: it loads the index by path once per actor and runs
one FAISS search per batch of query embeddings. `search_offline` maps it over the queries on an
actor pool, or calls it in this process when Ray is disabled; both give the same run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from xqg_ray.config import RayConfig, StageResources
from xqg_ray.errors import XqgError
from xqg_ray.index.search import ShardedSearcher
from xqg_ray.schema import arrow_to_vectors
from xqg_ray.storage import write_bytes_atomic

RUN_SCHEMA = pa.schema(
    [("qid", pa.string()), ("pid", pa.string()), ("score", pa.float32()), ("rank", pa.int32())]
)
SCORE_TOLERANCE = 1e-3  # offline and service encode queries in different batches: float noise


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


def sorted_run(run: pa.Table) -> pa.Table:
    """One canonical row order (qid, rank), whatever order the batches finished in."""
    return run.sort_by([("qid", "ascending"), ("rank", "ascending")])


class IndexSearcher:
    """Ray Data callable class: the index loads from its URL in `__init__` (copied locally and
    memory-mapped), then each batch of (qid, vector) rows is one search call."""

    def __init__(self, index_url: str, depth: int, threads: int = 1):
        import faiss

        faiss.omp_set_num_threads(threads)
        self.searcher = ShardedSearcher(index_url)
        self.depth = depth

    def __call__(self, batch: pa.Table) -> pa.Table:
        if batch.num_rows == 0:
            return RUN_SCHEMA.empty_table()
        scores, ids = self.searcher.search(arrow_to_vectors(batch["vector"]), self.depth)
        return run_table(batch["qid"].to_pylist(), scores, self.searcher.pids(ids))


def search_offline(
    index_url: str,
    queries: pa.Table,
    depth: int,
    ray_cfg: RayConfig,
    resources: StageResources,
    batch_size: int,
) -> pa.Table:
    """Every (qid, vector) query against the index, `depth` deep, sorted by (qid, rank)."""
    if queries.num_rows == 0:
        return RUN_SCHEMA.empty_table()
    queries = queries.select(["qid", "vector"])
    batches = [queries.slice(start, batch_size) for start in range(0, queries.num_rows, batch_size)]
    threads = resources.threads or max(1, int(resources.num_cpus))
    if not ray_cfg.enabled:
        searcher = IndexSearcher(index_url, depth, threads)
        return sorted_run(pa.concat_tables([searcher(batch) for batch in batches]))
    import ray

    from xqg_ray.stages.runner import check_resources, ensure_ray

    ensure_ray(ray_cfg)
    check_resources("evaluate.searchers", resources)
    remote_args: dict[str, Any] = {"num_cpus": resources.num_cpus}
    if resources.num_gpus:
        remote_args["num_gpus"] = resources.num_gpus
    dataset = ray.data.from_arrow(batches).map_batches(
        IndexSearcher,
        fn_constructor_kwargs={"index_url": index_url, "depth": depth, "threads": threads},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=min(resources.actors, len(batches))),
        **remote_args,
    )
    tables = [table for table in ray.get(dataset.to_arrow_refs()) if table.num_rows]
    if not tables:
        return RUN_SCHEMA.empty_table()
    return sorted_run(pa.concat_tables(tables).cast(RUN_SCHEMA))


def compare_runs(expected: pa.Table, actual: pa.Table, what: str) -> int:
    """Raise unless both runs rank the same pids for every query with scores within 1e-3;
    the error names the first query that differs. Returns the number of queries compared."""
    want, got = _by_query(expected), _by_query(actual)
    for qid in sorted(want.keys() | got.keys()):
        if qid not in got or qid not in want:
            side = "second" if qid not in got else "first"
            raise XqgError(f"{what}: query {qid!r} has no results in the {side} run")
        (want_pids, want_scores), (got_pids, got_scores) = want[qid], got[qid]
        if want_pids != got_pids:
            rank = next(
                (i for i, (a, b) in enumerate(zip(want_pids, got_pids, strict=False)) if a != b),
                min(len(want_pids), len(got_pids)),
            )
            raise XqgError(
                f"{what}: query {qid!r} ranks differently from rank {rank + 1}: "
                f"{want_pids[rank : rank + 3]} vs {got_pids[rank : rank + 3]} "
                f"({len(want_pids)} vs {len(got_pids)} passages)"
            )
        gaps = np.abs(np.asarray(want_scores) - np.asarray(got_scores))
        if len(gaps) and gaps.max() > SCORE_TOLERANCE:
            rank = int(gaps.argmax())
            raise XqgError(
                f"{what}: query {qid!r}: the score at rank {rank + 1} differs by "
                f"{gaps[rank]:.2e} ({want_scores[rank]:.6f} vs {got_scores[rank]:.6f})"
            )
    return len(want)


def _by_query(run: pa.Table) -> dict[str, tuple[list[str], list[float]]]:
    out: dict[str, tuple[list[str], list[float]]] = {}
    for row in sorted_run(run).to_pylist():
        pids, scores = out.setdefault(row["qid"], ([], []))
        pids.append(row["pid"])
        scores.append(row["score"])
    return out


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
