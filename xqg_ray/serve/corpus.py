"""The router's passage lookups as Arrow, memory-mapped from the node's cache: no Python dicts.

On first use a node writes one Arrow IPC file per (index pid map, corpus): one row per passage id
of the index, sorted by id, with its pid and (when a corpus is given) its title and text, joined
once. Every router replica on the node then memory-maps that file; a lookup is a binary search on
the id column and a `take` of k rows, so a replica's own memory does not grow with the corpus.
"""

from __future__ import annotations

import hashlib
import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from xqg_ray import storage
from xqg_ray.index.shard_cache import DEFAULT_CACHE_DIR, _locked, load_pid_table_cached


def _corpus_key(corpus_url: str) -> str:
    """Identifies a corpus version: the file's hash, or a part directory's manifest (or its
    parts' names, sizes and modification times when it has none), hashed."""
    fs, path = storage.url_to_fs(corpus_url)
    with storage.io_errors(corpus_url, "read"):
        is_file = fs.isfile(path)
    if is_file:
        return storage.sha256_of(corpus_url)
    table = storage.PartitionedTable(corpus_url)
    if storage.exists(table.manifest_url):
        return storage.sha256_of(table.manifest_url)
    with storage.io_errors(corpus_url, "list"):
        listing = sorted(
            (entry["name"], entry.get("size"), str(entry.get("mtime", "")))
            for entry in fs.ls(path, detail=True)
        )
    return hashlib.sha256(repr(listing).encode()).hexdigest()


def _build(index_url: str, manifest: dict, corpus_url: str, cache_dir: str | None) -> pa.Table:
    ids_pids = load_pid_table_cached(index_url, manifest, cache_dir)
    table = pa.table({"id": ids_pids["id"], "pid": ids_pids["pid"]}).combine_chunks()
    if corpus_url:
        corpus = storage.read_table(corpus_url, columns=["pid", "title", "text"])
        rows = pc.index_in(table["pid"], value_set=corpus["pid"])
        joined = corpus.select(["title", "text"]).take(rows)
        table = table.append_column("title", joined["title"]).append_column("text", joined["text"])
    return table.combine_chunks()


def passage_table(
    index_url: str, manifest: dict, corpus_url: str = "", cache_dir: str | None = None
) -> pa.Table | None:
    """(id, pid[, title, text]) sorted by id, memory-mapped; None when the index has no pids."""
    pid_entry = manifest.get("pid_map")
    if not pid_entry:
        return None
    cache = cache_dir or DEFAULT_CACHE_DIR
    os.makedirs(os.path.join(cache, "locks"), exist_ok=True)
    key = pid_entry["sha256"] + (("|" + _corpus_key(corpus_url)) if corpus_url else "")
    name = "passages-" + hashlib.sha256(key.encode()).hexdigest()[:32]
    path = os.path.join(cache, name + ".arrow")
    with _locked(os.path.join(cache, "locks", name)):
        if not os.path.exists(path):
            table = _build(index_url, manifest, corpus_url, cache_dir)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with pa.OSFile(tmp, "wb") as sink, ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            os.replace(tmp, path)
    return ipc.open_file(pa.memory_map(path, "r")).read_all()


class PassageLookup:
    """Passage ids -> pids (and titles/texts) from the memory-mapped passage table."""

    def __init__(self, table: pa.Table | None):
        self.table = table
        self.has_text = table is not None and "text" in table.column_names
        if table is None:
            self.ids = np.zeros(0, np.int64)
        else:
            column = table["id"].combine_chunks()  # one chunk already: zero-copy
            self.ids = column.to_numpy(zero_copy_only=True)

    def _positions(self, passage_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = np.asarray(passage_ids, dtype=np.int64).reshape(-1)
        pos = np.clip(np.searchsorted(self.ids, flat), 0, len(self.ids) - 1)
        found = (self.ids[pos] == flat) & (flat >= 0)
        return pos, found

    def _column(self, name: str, pos: np.ndarray, found: np.ndarray) -> list:
        values = self.table[name].take(pa.array(pos)).to_pylist()
        return [value if ok else None for value, ok in zip(values, found, strict=True)]

    def pids(self, passage_ids: np.ndarray) -> list[list[str | None]]:
        """Same shape as `passage_ids` (n, k); None where unknown or -1."""
        n, k = passage_ids.shape
        if not len(self.ids):
            return [[None] * k for _ in range(n)]
        pos, found = self._positions(passage_ids)
        flat = self._column("pid", pos, found)
        return [flat[row * k : (row + 1) * k] for row in range(n)]

    def texts(self, passage_ids: np.ndarray) -> list[list[tuple[str | None, str | None]]]:
        n, k = passage_ids.shape
        if not self.has_text or not len(self.ids):
            return [[(None, None)] * k for _ in range(n)]
        pos, found = self._positions(passage_ids)
        titles = self._column("title", pos, found)
        texts = self._column("text", pos, found)
        pairs = list(zip(titles, texts, strict=True))
        return [pairs[row * k : (row + 1) * k] for row in range(n)]
