"""Search FAISS shards and merge their answers into one global top-k.

Every shard returns its own top-k under global ids; `merge_topk` keeps the best k of all of them
with FAISS's own result heap. A shard with fewer than k vectors pads with id -1, which the merge
ignores, so the merged answer equals one exact index over all vectors.

Multivector indexes hold several entries per passage; a passage scores its best entry. To return k
distinct passages exactly, `DistinctPassagePlan` over-fetches entries and fetches deeper only for
the queries that need it: if the top-d entries of a query contain k distinct passages, those are its
exact top-k passages (any passage outside scores at most the d-th entry, which no kept passage
is below), and d = k * max_entries_per_passage always holds k passages when the index has them.
With tied scores at the cut-off, any of the tied passages may be returned.
"""

from __future__ import annotations

import faiss
import numpy as np
import pyarrow as pa

from xqg_ray.errors import InputError, StorageError

FLT_MAX = float(np.finfo(np.float32).max)
INITIAL_OVERFETCH = 2  # first multivector fetch depth = k * this (capped)
DEEPEN_FACTOR = 4  # each further fetch multiplies the depth by this (capped)


def keeps_max(metric: str) -> bool:
    """Inner product ranks larger scores first, L2 distance smaller ones."""
    return metric == "ip"


def empty_score(keep_max: bool) -> float:
    """The score FAISS gives a missing result (id -1)."""
    return -FLT_MAX if keep_max else FLT_MAX


def check_k(k: int, limit: int | None = None) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k!r}")
    if limit is not None and k > limit:
        raise InputError(f"k must be at most {limit}, got {k}")
    return int(k)


def check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """Queries as a C-contiguous float32 (n, dim) array, or an InputError saying what is wrong."""
    array = np.asarray(queries)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] == 0:
        raise InputError(f"query vectors must be a non-empty (n, {dim}) array, got {array.shape}")
    if array.shape[1] != dim:
        raise InputError(f"query vectors have dimension {array.shape[1]}, the index has {dim}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"query vectors must be real numbers, got {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise InputError("query vectors contain NaN or infinity")
    return array


def search_index(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One FAISS `search` call for the whole batch: (scores, ids), each (n, k), -1 = no result."""
    queries = check_queries(queries, index.d)
    scores, ids = index.search(queries, check_k(k))
    return scores, ids


def merge_topk(
    results: list[tuple[np.ndarray, np.ndarray]], k: int, keep_max: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The best k of several shards' (scores, ids) per query, best first, -1-padded."""
    if not results:
        raise InputError("merge_topk needs at least one shard result")
    k = check_k(k)
    nq = results[0][0].shape[0]
    heap = faiss.ResultHeap(nq, k, keep_max=keep_max)
    for scores, ids in results:
        if scores.shape != ids.shape or scores.shape[0] != nq:
            raise InputError(
                f"shard result shapes {scores.shape}/{ids.shape} do not match {nq} queries"
            )
        # whatever score an index gives a missing result, make sure the heap never keeps it
        scores = np.where(ids < 0, empty_score(keep_max), scores)
        heap.add_result(scores, ids)
    heap.finalize()
    return heap.D, heap.I


class EntryMap:
    """Multivector entry id -> passage id, from the (n, 2) table `build_shards` writes."""

    def __init__(self, pairs: np.ndarray):
        self.entries = np.ascontiguousarray(pairs[:, 0])
        self.passages = np.ascontiguousarray(pairs[:, 1])
        counts = np.unique(self.passages, return_counts=True)[1]
        self.max_entries_per_passage = int(counts.max()) if len(counts) else 1

    def to_passages(self, entry_ids: np.ndarray) -> np.ndarray:
        """Passage ids of `entry_ids` (same shape); -1 stays -1."""
        flat = entry_ids.reshape(-1)
        pos = np.clip(np.searchsorted(self.entries, flat), 0, len(self.entries) - 1)
        known = self.entries[pos] == flat
        if not (known | (flat < 0)).all():
            missing = flat[~known & (flat >= 0)][0]
            raise StorageError(f"entry id {missing} is not in the index's entry map")
        return np.where(flat < 0, -1, self.passages[pos]).reshape(entry_ids.shape)


class StrideEntryMap:
    """Multivector entry id -> passage id as `entry id // stride` (ids built that way by the
    pipeline: `passage id * stride + j`), with no table to load."""

    def __init__(self, stride: int, max_entries_per_passage: int):
        self.stride = int(stride)
        self.max_entries_per_passage = max(1, int(max_entries_per_passage))

    def to_passages(self, entry_ids: np.ndarray) -> np.ndarray:
        return np.where(entry_ids < 0, -1, entry_ids // self.stride)


def is_multivector(manifest: dict) -> bool:
    """Whether the index holds several entries per passage (searches collapse them)."""
    return bool(manifest.get("entry_stride") or manifest.get("entry_map"))


def max_entries_per_passage(manifest: dict) -> int:
    """The most entries one passage has in the index (1 unless multivector)."""
    if manifest.get("entry_stride"):
        return int(manifest["max_entries_per_passage"])
    return int((manifest.get("entry_map") or {}).get("max_entries_per_passage", 1))


def entry_map_of(manifest: dict, pairs: np.ndarray | None) -> EntryMap | StrideEntryMap | None:
    """The manifest's entry -> passage mapping: by stride when recorded, else the table."""
    if manifest.get("entry_stride"):
        return StrideEntryMap(manifest["entry_stride"], manifest["max_entries_per_passage"])
    return EntryMap(pairs) if pairs is not None else None


def collapse_to_passages(
    scores: np.ndarray, passages: np.ndarray, k: int, keep_max: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Each passage once, scored by its best entry: (scores, passage ids), each (n, k).

    `passages` are the passage ids of the entries whose `scores` are given, sorted best first
    per row (as FAISS and `merge_topk` return), -1 for no entry. Rows with fewer than k
    distinct passages are padded with id -1.
    """
    k = check_k(k)
    out_scores = np.full((len(scores), k), empty_score(keep_max), dtype=np.float32)
    out_ids = np.full((len(scores), k), -1, dtype=np.int64)
    for row in range(len(scores)):
        valid = passages[row] >= 0
        row_passages, row_scores = passages[row][valid], scores[row][valid]
        _, first = np.unique(row_passages, return_index=True)  # first = best, rows are sorted
        best = np.sort(first)[:k]
        out_ids[row, : len(best)] = row_passages[best]
        out_scores[row, : len(best)] = row_scores[best]
    return out_scores, out_ids


class DistinctPassagePlan:
    """Exact top-k passages over a multivector index, fetching deeper only where needed.

    A driver asks `next_request()` for (rows, depth), searches the entries of those query rows to
    that depth (merged over shards), hands their scores and passage ids to `add`, and repeats
    until it gets None. Sync, async and task-parallel callers share this logic.
    """

    def __init__(
        self, n_queries: int, k: int, max_entries_per_passage: int, n_total: int, keep_max: bool
    ):
        self.k = check_k(k)
        self.keep_max = keep_max
        self.cap = min(n_total, self.k * max(1, int(max_entries_per_passage)))
        self.depth = min(self.cap, self.k * INITIAL_OVERFETCH)
        self.rows: np.ndarray | None = np.arange(n_queries)
        self.scores = np.full((n_queries, self.k), empty_score(keep_max), dtype=np.float32)
        self.ids = np.full((n_queries, self.k), -1, dtype=np.int64)

    def next_request(self) -> tuple[np.ndarray, int] | None:
        if self.rows is None or len(self.rows) == 0:
            return None
        return self.rows, self.depth

    def add(self, scores: np.ndarray, passages: np.ndarray) -> None:
        """The entries found for the requested rows: scores and their passages' ids."""
        rows = self.rows
        got_scores, got_ids = collapse_to_passages(scores, passages, self.k, self.keep_max)
        self.scores[rows], self.ids[rows] = got_scores, got_ids
        short = got_ids[:, -1] < 0
        if self.depth >= self.cap:
            self.rows = None  # depth cap reached: these rows are exact with what the index has
            return
        self.rows = rows[short]
        self.depth = min(self.cap, self.depth * DEEPEN_FACTOR)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.scores, self.ids


class PidMap:
    """Passage id (int64) -> corpus pid (string); an index built without pids maps to None."""

    def __init__(self, table: pa.Table | None):
        self.ids = table.column("id").to_numpy() if table is not None else np.zeros(0, np.int64)
        self.pids = np.asarray(
            table.column("pid").to_pylist() if table is not None else [], dtype=object
        )

    def lookup(self, passage_ids: np.ndarray) -> np.ndarray:
        """The pids of `passage_ids` (same shape, object), None where unknown or -1."""
        out = np.full(passage_ids.shape, None, dtype=object)
        if not len(self.ids):
            return out
        pos = np.clip(np.searchsorted(self.ids, passage_ids), 0, len(self.ids) - 1)
        found = (self.ids[pos] == passage_ids) & (passage_ids >= 0)
        out[found] = self.pids[pos[found]]
        return out
