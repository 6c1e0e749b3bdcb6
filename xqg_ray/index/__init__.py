"""FAISS shard build / load / search / merge (see `shards` for the on-disk layout)."""

from xqg_ray.index.in_process import InProcessIndex
from xqg_ray.index.search import (
    DistinctPassagePlan,
    EntryMap,
    PidMap,
    StrideEntryMap,
    collapse_to_passages,
    merge_topk,
    search_index,
)
from xqg_ray.index.shards import (
    IndexSpec,
    build_shards,
    find_index,
    load_manifest,
    load_shard,
)

__all__ = [
    "DistinctPassagePlan",
    "EntryMap",
    "InProcessIndex",
    "IndexSpec",
    "PidMap",
    "StrideEntryMap",
    "build_shards",
    "collapse_to_passages",
    "find_index",
    "load_manifest",
    "load_shard",
    "merge_topk",
    "search_index",
]
