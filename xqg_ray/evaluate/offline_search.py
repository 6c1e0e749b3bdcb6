"""Offline search: evaluation queries against an index, as a ranked run table.

The search is split into (shard x query batch) calls merged exactly per batch:
`EvaluationShardActor` holds some shards and answers calls, `QueryBatchPlan` plans one batch's
calls and merges their answers. `search_offline` runs them on a pool of Ray actors, or in this
process when Ray is disabled; both give the same run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from xqg_ray.config import RayConfig, StageResources
from xqg_ray.evaluate.runs import RUN_SCHEMA, run_table, sorted_run
from xqg_ray.index.search import (
    DistinctPassagePlan,
    is_multivector,
    keeps_max,
    max_entries_per_passage,
)
from xqg_ray.index.shard_hits import ShardHits, ShardWithPids, merge_hits
from xqg_ray.index.shards import load_manifest
from xqg_ray.schema import arrow_to_vectors


class EvaluationShardActor:
    """Holds some shards of one index, each loaded on its first call (from the node's checksummed
    cache, memory-mapped where the index type allows), and answers (shard, query batch) calls:
    a Ray actor in evaluation, a plain object without Ray."""

    def __init__(self, index_url: str, manifest: dict, search_params: str, threads: int):
        import faiss

        faiss.omp_set_num_threads(threads)
        self.index_url = index_url
        self.manifest = manifest
        self.search_params = search_params
        self.shards: dict[int, ShardWithPids] = {}

    def search(self, shard: int, vectors: np.ndarray, depth: int) -> ShardHits:
        if shard not in self.shards:
            self.shards[shard] = ShardWithPids(
                self.index_url, self.manifest, shard, self.search_params
            )
        return self.shards[shard].search(vectors, depth)


class QueryBatchPlan:
    """One batch of queries against every shard of an index: which (rows, depth) to ask every
    shard for next, and the exact merge of their answers into the batch's run rows.

    One request for one-entry-per-passage indexes; multivector ones deepen where a row has fewer
    than `depth` distinct passages (`DistinctPassagePlan`)."""

    def __init__(self, qids: list[str], vectors: np.ndarray, depth: int, manifest: dict):
        self.qids = qids
        self.vectors = vectors
        self.depth = depth
        self.keep_max = keeps_max(manifest["metric"])
        self.plan: DistinctPassagePlan | None = None
        if is_multivector(manifest):
            self.plan = DistinctPassagePlan(
                len(qids),
                depth,
                max_entries_per_passage(manifest),
                int(manifest["n_total"]),
                self.keep_max,
            )
        self.asked = False
        self.scores = np.zeros((len(qids), 0), np.float32)
        self.pids = np.zeros((len(qids), 0), dtype=object)
        self.pid_of: dict[int, str] = {}

    def next_request(self) -> tuple[np.ndarray, int] | None:
        if self.plan is not None:
            return self.plan.next_request()
        return None if self.asked else (np.arange(len(self.qids)), self.depth)

    def add(self, hits: list[ShardHits]) -> None:
        """Every shard's answer to the last request, in any order."""
        rows, depth = self.next_request()
        merged = merge_hits(hits, depth, self.keep_max)
        if self.plan is None:
            self.asked = True
            self.scores, self.pids = merged.scores, merged.pids
            return
        known = merged.passages >= 0
        self.pid_of.update(zip(merged.passages[known].tolist(), merged.pids[known], strict=True))
        self.plan.add(merged.scores, merged.passages)
        if self.plan.next_request() is None:
            self.scores, passages = self.plan.result()
            self.pids = np.vectorize(self.pid_of.get, otypes=[object])(passages)

    def run(self) -> pa.Table:
        return run_table(self.qids, self.scores, self.pids.tolist())


def search_offline(
    index_url: str,
    queries: pa.Table,
    depth: int,
    ray_cfg: RayConfig,
    resources: StageResources,
    batch_size: int,
    search_params: str = "",
) -> pa.Table:
    """Every (qid, vector) query against the index, `depth` deep, sorted by (qid, rank).

    The search is split into (shard x query batch) calls, merged exactly per batch. On Ray, a
    pool of `resources.actors` search actors holds the shards, shard s on actor s mod pool size,
    so each shard is loaded once and the pool holds the index once, whatever its size; without
    Ray one `EvaluationShardActor` in this process answers them all. `search_params` (a
    faiss.ParameterSpace string such as `nprobe=16`) overrides the index's own."""
    if queries.num_rows == 0:
        return RUN_SCHEMA.empty_table()
    manifest = load_manifest(index_url)
    n_shards = len(manifest["shards"])
    batches = [
        QueryBatchPlan(batch["qid"].to_pylist(), arrow_to_vectors(batch["vector"]), depth, manifest)
        for batch in (
            queries.slice(start, batch_size) for start in range(0, queries.num_rows, batch_size)
        )
    ]
    threads = resources.threads or max(1, int(resources.num_cpus))
    if ray_cfg.enabled:
        _search_on_ray(index_url, manifest, batches, search_params, threads, ray_cfg, resources)
    else:
        worker = EvaluationShardActor(index_url, manifest, search_params, threads)
        for batch in batches:
            while (request := batch.next_request()) is not None:
                rows, request_depth = request
                vectors = batch.vectors[rows]
                batch.add([worker.search(s, vectors, request_depth) for s in range(n_shards)])
    runs = [table for table in (batch.run() for batch in batches) if table.num_rows]
    return sorted_run(pa.concat_tables(runs)) if runs else RUN_SCHEMA.empty_table()


def _search_on_ray(
    index_url: str,
    manifest: dict,
    batches: list[QueryBatchPlan],
    search_params: str,
    threads: int,
    ray_cfg: RayConfig,
    resources: StageResources,
) -> None:
    """Ask every shard for every batch's requests on a pool of search actors, merging each
    batch's answers as they complete (the driver holds query-sized results only)."""
    import ray

    from xqg_ray.stages.runner import check_resources, ensure_ray, worker_errors

    ensure_ray(ray_cfg)
    check_resources("evaluate.searchers", resources)
    n_shards = len(manifest["shards"])
    options: dict[str, Any] = {"num_cpus": resources.num_cpus}
    if resources.num_gpus:
        options["num_gpus"] = resources.num_gpus
    actor = ray.remote(EvaluationShardActor).options(**options)
    workers = [
        actor.remote(index_url, manifest, search_params, threads)
        for _ in range(min(resources.actors, n_shards))
    ]
    in_flight: dict[Any, tuple[int, int]] = {}
    answers: list[dict[int, ShardHits]] = [{} for _ in batches]

    def ask(number: int) -> None:
        request = batches[number].next_request()
        if request is None:
            return
        rows, depth = request
        vectors = ray.put(batches[number].vectors[rows])
        for shard in range(n_shards):
            ref = workers[shard % len(workers)].search.remote(shard, vectors, depth)
            in_flight[ref] = (number, shard)

    try:
        for number in range(len(batches)):
            ask(number)
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1)
            number, shard = in_flight.pop(done[0])
            with worker_errors():
                answers[number][shard] = ray.get(done[0])
            if len(answers[number]) == n_shards:
                batches[number].add([answers[number][s] for s in range(n_shards)])
                answers[number] = {}
                ask(number)
    finally:
        for worker in workers:
            ray.kill(worker)
