"""A whole index searched in this process: the reference the service must agree with.

It loads every shard as a `ShardGroup` (the node's shard cache, checksums and the exact merge a
Serve replica uses), searched shard after shard on FAISS's own threads, and collapses multivector
entries to passages with `DistinctPassagePlan`, as the router does, so offline checks and
benchmarks compare the service with the same search done here.
"""

from __future__ import annotations

import numpy as np

from xqg_ray.index.search import DistinctPassagePlan, PidMap, check_k, check_queries, entry_map_of
from xqg_ray.index.shard_cache import load_entry_map_cached, load_pid_table_cached
from xqg_ray.index.shard_group import ShardGroup
from xqg_ray.index.shards import load_manifest


class InProcessIndex:
    """All shards of an index in this process, multivector entries collapsed, pids looked up."""

    def __init__(self, index_url: str, cache_dir: str | None = None, mmap: bool = True):
        self.index_url = index_url
        self.manifest = load_manifest(index_url)
        shards = list(range(len(self.manifest["shards"])))
        self.group = ShardGroup(index_url, self.manifest, shards, cache_dir, mmap, parallel=False)
        pairs = None
        if not self.manifest.get("entry_stride"):
            pairs = load_entry_map_cached(index_url, self.manifest, cache_dir)
        self.entry_map = entry_map_of(self.manifest, pairs)
        self.pid_map = PidMap(load_pid_table_cached(index_url, self.manifest, cache_dir))

    @property
    def dim(self) -> int:
        return int(self.manifest["dimension"])

    def search_entries(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-`depth` index entries over all shards (entry ids; passage ids unless multivector)."""
        return self.group.search(check_queries(queries, self.dim), check_k(depth))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, passage ids), each (n, k), best first; multivector entries collapsed."""
        queries = check_queries(queries, self.dim)
        if self.entry_map is None:
            return self.search_entries(queries, check_k(k))
        plan = DistinctPassagePlan(
            len(queries),
            k,
            self.entry_map.max_entries_per_passage,
            int(self.manifest["n_total"]),
            self.group.keep_max,
        )
        while (request := plan.next_request()) is not None:
            rows, depth = request
            scores, entry_ids = self.search_entries(queries[rows], depth)
            plan.add(scores, self.entry_map.to_passages(entry_ids))
        return plan.result()

    def pids(self, passage_ids: np.ndarray) -> list[list[str | None]]:
        """Corpus pids for passage ids (None where unknown or -1)."""
        return self.pid_map.lookup(passage_ids).tolist()
