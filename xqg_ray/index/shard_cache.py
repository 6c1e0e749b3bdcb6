"""One local shard cache per node, shared by every replica there; each file checksummed once.

Remote files (s3://...) are copied once into `<cache>/files/<sha256>` (content-addressed, so two
indexes sharing a shard share the copy); local files are used where they are. Either way the
first replica to need a file checks its SHA-256 against the manifest under a per-file lock and
leaves a marker; later replicas on the node (restarts, more replicas, other applications) see the
marker and skip both copy and checksum. A local file that changed since (size, mtime or inode)
gets a new marker key, so it is checked again. Shards are then memory-mapped where the index type
allows, so replicas of the same shard on a node share its pages through the page cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import uuid
from contextlib import contextmanager

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xqg_ray import storage
from xqg_ray.errors import InputError, StorageError
from xqg_ray.index.shards import read_entry_map_file, read_shard_file
from xqg_ray.storage import sha256_of

DEFAULT_CACHE_DIR = os.path.join(tempfile.gettempdir(), "xqg-ray-shard-cache")


@contextmanager
def _locked(path: str):
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _marker_key(path: str, sha: str) -> str:
    stat = os.stat(path)
    ident = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}|{sha}"
    return hashlib.sha256(ident.encode()).hexdigest()


def cached_file(index_url: str, entry: dict, cache_dir: str | None = None) -> str:
    """A verified local path for a file the manifest names (copied and checked once per node)."""
    cache = cache_dir or DEFAULT_CACHE_DIR
    for sub in ("files", "verified", "locks"):
        os.makedirs(os.path.join(cache, sub), exist_ok=True)
    url = storage.join(index_url, entry["file"])
    sha = entry["sha256"]
    local = storage.is_local(url)
    with _locked(os.path.join(cache, "locks", sha)):
        if local:
            path = storage.local_copy(url)  # the file itself; StorageError when missing
        else:
            path = os.path.join(cache, "files", sha)
            if not os.path.exists(path):
                tmp = f"{path}.tmp-{uuid.uuid4().hex}"
                fs, remote = storage.url_to_fs(url)
                if not storage.exists(url):
                    raise StorageError(f"{url}: no such file or directory")
                with storage.io_errors(url, "download"):
                    fs.get(remote, tmp)
                os.replace(tmp, path)
        marker = os.path.join(cache, "verified", _marker_key(path, sha))
        if os.path.exists(marker):
            return path
        digest = sha256_of(path)
        if digest != sha:
            if not local:
                os.remove(path)
            raise StorageError(
                f"{url}: checksum mismatch (sha256 {digest[:12]}..., manifest says {sha[:12]}...): "
                "the file is corrupt or was replaced; rebuild the index"
            )
        with open(marker, "w") as handle:
            handle.write(url + "\n")
    return path


def load_shard_cached(
    index_url: str, manifest: dict, shard: int, cache_dir: str | None = None, mmap: bool = True
) -> faiss.Index:
    """One shard from the node's cache, memory-mapped where the index type allows."""
    shards = manifest["shards"]
    if not 0 <= shard < len(shards):
        raise InputError(f"{index_url}: shard {shard} does not exist (index has {len(shards)})")
    return read_shard_file(cached_file(index_url, shards[shard], cache_dir), manifest, shard, mmap)


def _cached_side_file(
    index_url: str, manifest: dict, key: str, cache_dir: str | None
) -> str | None:
    """The verified local path of the manifest's `key` file, or None when it records none."""
    entry = manifest.get(key)
    return cached_file(index_url, entry, cache_dir) if entry else None


def load_entry_map_cached(
    index_url: str, manifest: dict, cache_dir: str | None = None
) -> np.ndarray | None:
    """The multivector [entry id, passage id] table, memory-mapped; None for one entry each."""
    path = _cached_side_file(index_url, manifest, "entry_map", cache_dir)
    return None if path is None else read_entry_map_file(path)


def load_pid_table_cached(
    index_url: str, manifest: dict, cache_dir: str | None = None
) -> pa.Table | None:
    """passage id -> pid (columns id, pid, sorted by id), or None when the index has no pids."""
    path = _cached_side_file(index_url, manifest, "pid_map", cache_dir)
    return None if path is None else pq.read_table(path)
