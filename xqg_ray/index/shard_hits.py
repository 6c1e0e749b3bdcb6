"""One shard's answer with the passages it names, and the exact merge of several such answers.

Evaluation searches an index as (shard x query batch) calls: a worker holds a few shards (each
loaded once, from the node's checksummed cache) and answers each call with a `ShardHits`: the
shard's own top entries, their passage ids and the corpus pids of those passages, read from the
shard's own pid map. Merging the shards' hits (`merge_hits`) gives what one exact index over all
of them would, with the pids carried along, so no worker or driver ever loads the whole index's
pid map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from xqg_ray.index.search import (
    EntryMap,
    PidMap,
    StrideEntryMap,
    check_queries,
    entry_map_of,
    merge_topk,
    search_index,
)
from xqg_ray.index.shard_cache import cached_file, load_entry_map_cached, load_shard_cached
from xqg_ray.index.shards import apply_search_params


@dataclass
class ShardHits:
    """Top entries of some queries, best first per row; -1 / None where there is no entry."""

    scores: np.ndarray  # (n, depth) float32
    ids: np.ndarray  # (n, depth) int64 global entry ids (passage ids unless multivector)
    passages: np.ndarray  # (n, depth) int64 passage ids
    pids: np.ndarray  # (n, depth) object: corpus pid of each passage

    def rows(self, rows: np.ndarray) -> ShardHits:
        return ShardHits(self.scores[rows], self.ids[rows], self.passages[rows], self.pids[rows])


class ShardWithPids:
    """One shard of an index, loaded once, with the pids of the passages it holds: its own pid
    map, else the index's (indexes written before every shard had one)."""

    def __init__(
        self,
        index_url: str,
        manifest: dict,
        shard: int,
        search_params: str = "",
        cache_dir: str | None = None,
    ):
        self.index = load_shard_cached(index_url, manifest, shard, cache_dir)
        if search_params:
            apply_search_params(self.index, search_params)
        pairs = None
        if manifest.get("entry_map") and not manifest.get("entry_stride"):
            pairs = load_entry_map_cached(index_url, manifest, cache_dir)
        self.entry_map: EntryMap | StrideEntryMap | None = entry_map_of(manifest, pairs)
        entry = manifest["shards"][shard].get("pid_map") or manifest.get("pid_map")
        table = pq.read_table(cached_file(index_url, entry, cache_dir)) if entry else None
        self.pids = PidMap(table)

    def search(self, vectors: np.ndarray, depth: int) -> ShardHits:
        scores, ids = search_index(self.index, check_queries(vectors, self.index.d), depth)
        passages = ids if self.entry_map is None else self.entry_map.to_passages(ids)
        return ShardHits(scores, ids, passages, self.pids.lookup(passages))


def merge_hits(hits: list[ShardHits], depth: int, keep_max: bool) -> ShardHits:
    """The best `depth` entries of several shards' hits per query (FAISS's own result heap, as
    `merge_topk`), with each kept entry's passage id and pid."""
    scores, ids = merge_topk([(h.scores, h.ids) for h in hits], depth, keep_max)
    every_id = np.concatenate([h.ids for h in hits], axis=1)
    every_passage = np.concatenate([h.passages for h in hits], axis=1)
    every_pid = np.concatenate([h.pids for h in hits], axis=1)
    passages = np.full(ids.shape, -1, dtype=np.int64)
    pids = np.full(ids.shape, None, dtype=object)
    for row in range(len(ids)):  # entry ids are unique across shards: find each kept one
        order = np.argsort(every_id[row], kind="stable")
        pos = order[np.searchsorted(every_id[row], ids[row], sorter=order)]
        kept = ids[row] >= 0
        passages[row, kept] = every_passage[row, pos[kept]]
        pids[row, kept] = every_pid[row, pos[kept]]
    return ShardHits(scores, ids, passages, pids)
