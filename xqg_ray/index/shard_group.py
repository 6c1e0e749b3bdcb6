"""A group of shards of one index searched in this process and merged into one global top-k.

Shards come from the node's shard cache (checksummed once, memory-mapped where the index type
allows). Each shard answers under global ids (-1 where it holds fewer than k) and `merge_topk`
keeps the best k. Shards are searched in parallel threads (FAISS releases the GIL) only when each
holds enough work to pay for the hand-off.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

from xqg_ray.index.search import keeps_max, merge_topk, search_index
from xqg_ray.index.shard_cache import load_shard_cached

# Bytes one query reads (see `scan_bytes`) below which a search is cheaper than handing it to a
# thread (a Serve replica then searches inline, in its event loop), and per shard above which
# shards are searched in parallel threads: a thread hand-off costs more than it saves on small
# scans. Measured on 2 CPUs, 20k x 128 Flat in 4 shards (10 MB), one
# query: sequential 0.5 ms, a thread per shard 1.2 ms, plus 0.25 ms for asyncio.to_thread.
INLINE_BYTES = 16 << 20
PARALLEL_BYTES = 64 << 20


def scan_bytes(index: faiss.Index) -> float:
    """Roughly the bytes one query reads: the probed inverted lists plus the coarse quantizer
    for IVF indexes, every code for the others (an overestimate for graph indexes)."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        probed = min(1.0, ivf.nprobe / max(1, ivf.nlist))
        return index.ntotal * probed * ivf.code_size + ivf.nlist * index.d * 4
    return float(index.ntotal) * index.d * 4


class ShardGroup:
    """Several shards of one index in this process, from the node's shard cache (`cache_dir`,
    default the node's), merged exactly: what a Serve shard-group replica and a router holding a
    small index itself search, shards in parallel threads of one FAISS thread each, and what
    `InProcessIndex` searches with `parallel=False`, shard after shard on FAISS's own threads."""

    def __init__(
        self,
        index_url: str,
        manifest: dict,
        shards: list[int],
        cache_dir: str | None = None,
        mmap: bool = True,
        parallel: bool = True,
    ):
        if parallel:
            faiss.omp_set_num_threads(1)  # parallel over shards, one FAISS thread each
        self.shards = list(shards)
        self.keep_max = keeps_max(manifest["metric"])
        self.expected = [int(manifest["shards"][s]["count"]) for s in self.shards]
        self.indexes = [
            load_shard_cached(index_url, manifest, s, cache_dir, mmap) for s in self.shards
        ]
        costs = [scan_bytes(index) for index in self.indexes]
        self.largest, self.total = max(costs), sum(costs)
        self.pool = (
            ThreadPoolExecutor(len(self.indexes), thread_name_prefix="shard")
            if parallel and len(self.indexes) > 1
            else None
        )

    def is_small(self, n_queries: int) -> bool:
        """Whether searching `n_queries` is cheaper than handing the work to a thread."""
        return n_queries * self.total < INLINE_BYTES

    def search(self, vectors: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, global ids) of this group's top-`depth`, -1-padded; shards in parallel
        threads (FAISS releases the GIL) when each holds enough work to pay for the hand-off."""
        if len(self.indexes) == 1:
            return search_index(self.indexes[0], vectors, depth)
        if self.pool is not None and len(vectors) * self.largest >= PARALLEL_BYTES:
            answers = list(
                self.pool.map(lambda index: search_index(index, vectors, depth), self.indexes)
            )
        else:
            answers = [search_index(index, vectors, depth) for index in self.indexes]
        return merge_topk(answers, depth, self.keep_max)

    def search_grouped(self, vectors: list[np.ndarray], depths: list[int]) -> list:
        """Requests of equal depth share one FAISS call; depth changes approximate indexes'
        results (HNSW searches max(efSearch, k)), so depths are never mixed."""
        answers: list = [None] * len(vectors)
        for depth in set(depths):
            members = [i for i, d in enumerate(depths) if d == depth]
            scores, ids = self.search(np.concatenate([vectors[i] for i in members]), depth)
            bounds = np.cumsum([len(vectors[i]) for i in members])[:-1]
            for i, part_scores, part_ids in zip(
                members, np.split(scores, bounds), np.split(ids, bounds), strict=True
            ):
                answers[i] = (part_scores, part_ids)
        return answers

    def check(self) -> None:
        for shard, index, expected in zip(self.shards, self.indexes, self.expected, strict=True):
            if index.ntotal != expected:
                raise RuntimeError(
                    f"shard {shard} holds {index.ntotal} vectors, expected {expected}"
                )
