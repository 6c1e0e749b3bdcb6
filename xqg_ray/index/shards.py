"""FAISS shards under one index URL: build, manifest, checksum-verified load.

Layout (any fsspec URL, local or s3://)::

    <index>/shard-00000.faiss ...   one FAISS index per shard, global int64 ids kept
    <index>/entry_map.npy            multivector only: (n, 2) int64 [entry id, passage id]
    <index>/pids.parquet             optional: passage id (int64) -> pid (string of the corpus)
    <index>/trained.faiss            trainable factories: the trained, empty index every
                                     shard started from (one coarse quantizer for all)
    <index>/shard-00000.pids.parquet the shard's own passage id -> pid map (when given pids)
    <index>/manifest.json            written last (`IndexManifest`): without it, incomplete

There is one writer. A shard is written by `write_shard` (a copy of the trained index, filled
under global ids, plus its pid map and checksums) and the index by `write_manifest`. The pipeline
(`stages/index.py`) runs one task per shard over a contiguous run of the entries table's parts,
so one shard can be rebuilt alone; `build_shards` does the same from vectors held in memory
(benchmarks, tests, small user indexes), cutting contiguous runs of rows. Either way a passage's
entries all sit in one shard. A multivector index whose entry ids are `passage id * stride + j`
records `entry_stride`, and `entry id // stride` is the passage (no entry map needed; one is still
written up to `LEGACY_ENTRY_MAP_MAX` entries for readers that expect it).

Side files are read with `np.load(allow_pickle=False)` and Parquet: nothing read from storage is
unpickled, and every file is checked against the manifest's sha256 before use.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xqg_ray import storage
from xqg_ray.errors import InputError, StorageError

FORMAT = "xqg-ray-faiss-shards/1"
MANIFEST_FILE = "manifest.json"
ENTRY_MAP_FILE = "entry_map.npy"
PID_MAP_FILE = "pids.parquet"
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
MMAP_FLAGS = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_MMAP_IFC  # IVF lists and flat codes
TRAINED_FILE = "trained.faiss"
LEGACY_ENTRY_MAP_MAX = 50_000_000  # entries; beyond, readers use entry_stride alone


def shard_file(shard: int) -> str:
    return f"shard-{shard:05d}.faiss"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _as_vectors(vectors: np.ndarray) -> np.ndarray:
    array = np.asarray(vectors)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"vectors must be a non-empty 2-D array (n, dim), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"vectors must be floating point, got {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        row = int(np.nonzero(~np.isfinite(array).all(axis=1))[0][0])
        raise InputError(f"vectors: row {row} contains NaN or infinity")
    return array


def _as_ids(ids: np.ndarray, n: int, name: str) -> np.ndarray:
    array = np.asarray(ids)
    if array.shape != (n,) or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{name} must be {n} integers, got shape {array.shape} {array.dtype}")
    array = array.astype(np.int64)
    if (array < 0).any():
        raise InputError(f"{name}: ids must be >= 0 (FAISS uses -1 for 'no result')")
    return array


def _empty_index(dim: int, factory: str, metric: str) -> faiss.Index:
    if metric not in METRICS:
        raise InputError(f"metric {metric!r} is not one of {sorted(METRICS)}")
    try:
        return faiss.index_factory(dim, factory, METRICS[metric])
    except RuntimeError as exc:
        raise InputError(f"FAISS factory {factory!r} is invalid: {exc}") from exc


def _with_ids(trained: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """A copy of the trained index holding `vectors` under their global `ids`.

    IVF-style indexes store ids themselves; the others (Flat, HNSW, PQ) are wrapped in an
    IndexIDMap, which is what FAISS raises a RuntimeError to ask for.
    """
    index = faiss.clone_index(trained)
    try:
        index.add_with_ids(vectors, ids)
        return index
    except RuntimeError:
        wrapped = faiss.IndexIDMap(faiss.clone_index(trained))
        wrapped.add_with_ids(vectors, ids)
        return wrapped


def _pid_table(passage_ids: np.ndarray, pids: Sequence[str]) -> pa.Table:
    """passage id -> pid, one row per passage; a passage id with two pids is an input error."""
    table = pa.table({"id": pa.array(passage_ids, pa.int64()), "pid": pa.array(pids, pa.string())})
    unique = table.group_by("id").aggregate([("pid", "count_distinct"), ("pid", "min")])
    conflicting = unique.filter(pc.greater(unique["pid_count_distinct"], 1))
    if conflicting.num_rows:
        raise InputError(f"pids: passage id {conflicting['id'][0].as_py()} has several pids")
    table = pa.table({"id": unique["id"], "pid": unique["pid_min"]})
    return table.sort_by("id")


def _write(url: str, data: bytes) -> dict[str, Any]:
    storage.write_bytes_atomic(url, data)
    return {"sha256": _sha256(data), "bytes": len(data)}


@dataclass(frozen=True)
class IndexSpec:
    """How vectors are indexed: FAISS factory and metric, shard count, training sample (rows,
    all when None), `faiss.ParameterSpace` search parameters applied at load time (for example
    `nprobe=16` for IVF, `efSearch=128` for HNSW), and the sampling seed."""

    factory: str = "Flat"
    metric: str = "ip"
    shards: int = 1
    train_sample: int | None = None
    search_params: str = ""
    seed: int = 0


@dataclass
class IndexManifest:
    """What `manifest.json` records, written last: the shards' records (from `write_shard`), the
    trained index they were copied from, and how entries map to passages and pids."""

    dimension: int
    factory: str
    shards: list[dict[str, Any]]
    metric: str = "ip"
    search_params: str = ""
    trained: dict[str, Any] | None = None
    entry_stride: int | None = None
    entry_map: dict[str, Any] | None = None
    pid_map: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The manifest as stored, with the totals readers use."""
        return {
            "format": FORMAT,
            **asdict(self),
            "n_total": sum(int(s["count"]) for s in self.shards),
            "max_entries_per_passage": max(
                (int(s["max_entries_per_passage"]) for s in self.shards), default=1
            ),
        }


def build_shards(
    vectors: np.ndarray,
    ids: np.ndarray,
    out_url: str,
    spec: IndexSpec = IndexSpec(),
    *,
    entry_to_passage: np.ndarray | None = None,
    pids: Sequence[str] | None = None,
    meta: dict | None = None,
) -> dict[str, Any]:
    """Index `vectors` held in memory under `out_url` with the pipeline's own writer (train once,
    `write_shard` per shard, `write_manifest`) and return the manifest.

    `ids` are the global int64 ids the search returns. For a multivector index, `ids` are entry
    ids and `entry_to_passage[i]` is the passage of entry `ids[i]`; searches then return passage
    ids, and a passage's entries all land in one shard. `pids[i]` (optional) is the corpus pid
    of row i's passage, so answers can name passages as the corpus does. Shards are contiguous
    runs of rows (of rows ordered by passage, for a multivector index).
    """
    vectors = _as_vectors(vectors)
    n, dim = vectors.shape
    ids = _as_ids(ids, n, "ids")
    if len(np.unique(ids)) != n:
        raise InputError("ids must be unique")
    if spec.train_sample is not None and spec.train_sample < 1:
        raise InputError(f"train_sample must be >= 1, got {spec.train_sample}")
    passage_ids = ids
    if entry_to_passage is not None:
        passage_ids = _as_ids(entry_to_passage, n, "entry_to_passage")
    if pids is not None and len(pids) != n:
        raise InputError(f"pids must have one entry per vector ({n}), got {len(pids)}")
    groups = _shard_rows(passage_ids, spec.shards, ordered=entry_to_passage is None)
    if spec.search_params:  # fail before anything is written
        apply_search_params(_empty_index(dim, spec.factory, spec.metric), spec.search_params)

    trained = None
    if needs_training(dim, spec.factory, spec.metric):
        sample = vectors
        if spec.train_sample is not None and spec.train_sample < n:
            rng = np.random.default_rng(spec.seed)
            sample = vectors[np.sort(rng.choice(n, size=spec.train_sample, replace=False))]
        trained = train_index(sample, out_url, spec.factory, spec.metric)
    base = base_index(out_url, dim, spec.factory, spec.metric, trained)

    names = pa.array(pids, pa.string()) if pids is not None else None
    shards = [
        write_shard(
            out_url,
            shard,
            base,
            [(vectors[r], ids[r], passage_ids[r], None if names is None else names.take(r))],
        )
        for shard, r in enumerate(groups)
    ]
    manifest = IndexManifest(
        dimension=dim,
        factory=spec.factory,
        shards=shards,
        metric=spec.metric,
        search_params=spec.search_params,
        trained=trained,
        entry_map=None if entry_to_passage is None else write_entry_map(out_url, ids, passage_ids),
        pid_map=merge_pid_maps(out_url, shards) if pids is not None else None,
        meta=meta or {},
    )
    return write_manifest(out_url, manifest)


def _shard_rows(passage_ids: np.ndarray, n_shards: int, ordered: bool) -> list[np.ndarray]:
    """Row numbers of each shard: `n_shards` contiguous runs as near equal in rows as passage
    boundaries allow, none empty; unless `ordered`, rows are first sorted by passage."""
    rows = np.arange(len(passage_ids)) if ordered else np.argsort(passage_ids, kind="stable")
    starts = np.flatnonzero(np.r_[True, passage_ids[rows][1:] != passage_ids[rows][:-1]])
    if not 1 <= n_shards <= len(starts):
        raise InputError(
            f"index shards must be between 1 and the number of passages ({len(starts)}), "
            f"got {n_shards}"
        )
    targets = np.cumsum([len(c) for c in np.array_split(np.arange(len(rows)), n_shards)])[:-1]
    chosen = [0]  # indexes into `starts`
    for shard, target in enumerate(targets, start=1):
        # the passage start nearest the target, leaving a passage for each shard still to come
        window = np.arange(chosen[-1] + 1, len(starts) - (n_shards - shard) + 1)
        chosen.append(int(window[np.argmin(np.abs(starts[window] - target))]))
    bounds = [int(starts[i]) for i in chosen] + [len(rows)]
    return [rows[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def shard_pid_file(shard: int) -> str:
    return f"shard-{shard:05d}.pids.parquet"


def needs_training(dim: int, factory: str, metric: str = "ip") -> bool:
    return not _empty_index(dim, factory, metric).is_trained


def train_index(
    sample: np.ndarray, out_url: str, factory: str, metric: str = "ip"
) -> dict[str, Any]:
    """Train `factory` once on `sample` (on the GPUs when FAISS sees any), write the trained,
    empty index as `trained.faiss` and return its record (file, sha256, bytes, sample rows)."""
    sample = _as_vectors(sample)
    index = _empty_index(sample.shape[1], factory, metric)
    try:
        if faiss.get_num_gpus() > 0 and hasattr(faiss, "index_cpu_to_all_gpus"):
            on_gpu = faiss.index_cpu_to_all_gpus(index)
            on_gpu.train(sample)
            index = faiss.index_gpu_to_cpu(on_gpu)
        else:
            index.train(sample)
    except RuntimeError as exc:
        raise InputError(f"cannot train the index on {len(sample)} vectors: {exc}") from exc
    return {"sample": len(sample), **_write_index_file(index, storage.join(out_url, TRAINED_FILE))}


def _write_index_file(index: faiss.Index, url: str) -> dict[str, Any]:
    """Serialise an index through a local temporary file (no second copy in memory), hash it
    while it is on local disk, then commit it to `url`."""
    handle, path = tempfile.mkstemp(suffix=".faiss")
    os.close(handle)
    try:
        faiss.write_index(index, path)
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 22), b""):
                digest.update(block)
        size = os.path.getsize(path)
        storage.put_file_atomic(path, url)
    finally:
        if os.path.exists(path):
            os.remove(path)
    return {"file": url.rstrip("/").rsplit("/", 1)[-1], "sha256": digest.hexdigest(), "bytes": size}


def base_index(
    out_url: str, dim: int, factory: str, metric: str, trained: dict[str, Any] | None
) -> faiss.Index:
    """What every shard starts from: the saved trained index (checksum verified), or an empty
    index of a factory that needs no training."""
    if trained is None:
        return _empty_index(dim, factory, metric)
    path = _verified_local_file(out_url, trained, None)
    try:
        return faiss.read_index(path)
    finally:
        if not storage.is_local(out_url):
            os.remove(path)


def write_shard(
    out_url: str,
    number: int,
    base: faiss.Index,
    batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, pa.Array | None]],
) -> dict[str, Any]:
    """Stream `(vectors, ids, passage_ids, pids)` batches into a copy of `base` under their
    global ids; write the shard and its passage id -> pid map (none when every batch's pids
    are None); return the shard's record.

    A passage's entries must all come in this shard's batches (shards follow parts, and a part
    holds all entries of its passages), so the per-shard pid maps never overlap."""
    index = None
    count = 0
    pid_tables = []
    max_entries = 0
    id_range = [None, None]
    named = False
    for vectors, ids, passage_ids, pids in batches:
        if len(ids) == 0:
            continue
        vectors = _as_vectors(vectors)
        ids = _as_ids(ids, len(vectors), "ids")
        if vectors.shape[1] != base.d:
            raise InputError(f"vectors have dimension {vectors.shape[1]}, the index {base.d}")
        if index is None:
            index = _with_ids(base, vectors, ids)
        else:
            index.add_with_ids(vectors, ids)
        count += len(ids)
        lo, hi = int(ids.min()), int(ids.max())
        id_range = [lo if id_range[0] is None else min(lo, id_range[0]), max(hi, id_range[1] or 0)]
        named = named or pids is not None
        names = pids if pids is not None else pa.nulls(len(passage_ids), pa.string())
        pid_tables.append(pa.table({"id": pa.array(passage_ids, pa.int64()), "pid": names}))
        max_entries = max(max_entries, int(np.unique(passage_ids, return_counts=True)[1].max()))
    if index is None:
        index = _with_ids(base, np.zeros((0, base.d), np.float32), np.zeros(0, np.int64))
    record: dict[str, Any] = {
        "count": count,
        "id_range": id_range,
        "max_entries_per_passage": max_entries,
        **_write_index_file(index, storage.join(out_url, shard_file(number))),
    }
    pid_table = (
        _pid_table(
            np.concatenate([t["id"].to_numpy() for t in pid_tables]),
            pa.concat_arrays([t["pid"].combine_chunks() for t in pid_tables]),
        )
        if pid_tables
        else pa.table({"id": pa.array([], pa.int64()), "pid": pa.array([], pa.string())})
    )
    record["n_passages"] = pid_table.num_rows
    record["pid_map"] = None  # vectors without pids: nothing to name
    if named or not pid_tables:
        data = storage.table_to_parquet_bytes(pid_table)
        record["pid_map"] = {
            "file": shard_pid_file(number),
            **_write(storage.join(out_url, shard_pid_file(number)), data),
        }
    return record


def merge_pid_maps(out_url: str, shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole index's `pids.parquet` from the shards' own maps (disjoint: a passage's entries
    share one shard), sorted by id, for readers that load one passage map."""
    tables = []
    for shard in shards:
        path = _verified_local_file(out_url, shard["pid_map"], None)
        tables.append(pq.read_table(path))
        if not storage.is_local(out_url):
            os.remove(path)
    table = pa.concat_tables(tables).combine_chunks().sort_by("id")
    data = storage.table_to_parquet_bytes(table)
    return {"file": PID_MAP_FILE, **_write(storage.join(out_url, PID_MAP_FILE), data)}


def write_entry_map(out_url: str, entry_ids: np.ndarray, passage_ids: np.ndarray) -> dict[str, Any]:
    """The multivector (n, 2) [entry id, passage id] table sorted by entry id (for
    `np.searchsorted` lookups), for readers without `entry_stride`; returns its record."""
    order = np.argsort(entry_ids, kind="stable")
    pairs = np.ascontiguousarray(np.stack([entry_ids[order], passage_ids[order]], axis=1))
    if len(pairs) > 1 and (np.diff(pairs[:, 0]) == 0).any():
        raise InputError("entry ids must be unique")
    buffer = io.BytesIO()
    np.save(buffer, pairs.astype(np.int64), allow_pickle=False)
    counts = np.unique(pairs[:, 1], return_counts=True)[1]
    return {
        "file": ENTRY_MAP_FILE,
        "max_entries_per_passage": int(counts.max()),
        "n_passages": len(counts),
        **_write(storage.join(out_url, ENTRY_MAP_FILE), buffer.getvalue()),
    }


def write_manifest(out_url: str, manifest: IndexManifest) -> dict[str, Any]:
    """Write the manifest last (an index without one is incomplete) and return it as stored."""
    stored = manifest.to_json()
    storage.write_json_atomic(storage.join(out_url, MANIFEST_FILE), stored)
    return stored


def load_manifest(index_url: str) -> dict:
    """The manifest of a complete index; a missing or foreign manifest is a StorageError."""
    url = storage.join(index_url, MANIFEST_FILE)
    if not storage.exists(url):
        raise StorageError(
            f"{url}: no index manifest (the index is missing or its build did not finish)"
        )
    manifest = storage.read_json(url)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StorageError(f"{url}: not an xqg-ray FAISS shard manifest (format {FORMAT})")
    return manifest


def _verified_local_file(index_url: str, entry: dict, local_dir: str | None) -> str:
    """A local copy of a file named in the manifest, whose sha256 matches the manifest."""
    url = storage.join(index_url, entry["file"])
    path = storage.local_copy(url, local_dir)
    digest = storage.sha256_of(path)
    if digest != entry["sha256"]:
        raise StorageError(
            f"{url}: checksum mismatch (sha256 {digest[:12]}..., manifest says "
            f"{entry['sha256'][:12]}...): the file is corrupt or was replaced; rebuild the index"
        )
    return path


def apply_search_params(index: faiss.Index, search_params: str) -> None:
    try:
        faiss.ParameterSpace().set_index_parameters(index, search_params)
    except RuntimeError as exc:
        raise InputError(
            f"search_params {search_params!r} do not apply to this index: {exc}"
        ) from exc


def load_shard(
    index_url: str, shard: int, local_dir: str | None = None, mmap: bool = True
) -> faiss.Index:
    """Load one shard: copy to local disk (remote URLs), verify sha256, then read (mmap if able)."""
    manifest = load_manifest(index_url)
    shards = manifest["shards"]
    if not 0 <= shard < len(shards):
        raise InputError(f"{index_url}: shard {shard} does not exist (index has {len(shards)})")
    path = _verified_local_file(index_url, shards[shard], local_dir)
    return read_shard_file(path, manifest, shard, mmap)


def read_shard_file(path: str, manifest: dict, shard: int, mmap: bool = True) -> faiss.Index:
    """A verified local shard file as an index (memory-mapped where the index type allows),
    checked against the manifest's count and dimension, with its search parameters set."""
    index = None
    if mmap:
        try:
            index = faiss.read_index(path, MMAP_FLAGS)
        except RuntimeError:
            index = None  # this index type cannot be memory-mapped: read it normally
    if index is None:
        try:
            index = faiss.read_index(path)
        except RuntimeError as exc:
            raise StorageError(f"{path}: FAISS cannot read this shard: {exc}") from exc
    expected = manifest["shards"][shard]["count"]
    if index.d != manifest["dimension"] or index.ntotal != expected:
        raise StorageError(
            f"{path}: shard holds {index.ntotal} vectors of dimension {index.d}, manifest says "
            f"{expected} of dimension {manifest['dimension']}"
        )
    if manifest.get("search_params"):
        apply_search_params(index, manifest["search_params"])
    return index


def read_entry_map_file(path: str) -> np.ndarray:
    """A verified local entry-map file as a memory-mapped (n, 2) int64 array."""
    try:
        pairs = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as exc:
        raise StorageError(f"{path}: not a readable entry map: {exc}") from exc
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.dtype != np.int64:
        raise StorageError(
            f"{path}: entry map must be (n, 2) int64, got {pairs.shape} {pairs.dtype}"
        )
    return pairs


def find_index(url: str) -> str:
    """`url` itself if it holds a manifest, else the single index under a run root's `index/`."""
    if storage.exists(storage.join(url, MANIFEST_FILE)):
        return url
    fs, path = storage.url_to_fs(storage.join(url, "index"))
    found = []
    if storage.exists(storage.join(url, "index")):
        with storage.io_errors(storage.join(url, "index"), "list"):
            found = sorted(fs.glob(path.rstrip("/") + f"/*/*/{MANIFEST_FILE}"))
    if len(found) == 1:
        relative = found[0][len(path.rstrip("/")) + 1 :].rsplit("/", 1)[0]
        return storage.join(url, "index", relative)
    if not found:
        raise StorageError(f"{url}: neither an index (no {MANIFEST_FILE}) nor a run root with one")
    choices = ", ".join(f[len(path.rstrip("/")) + 1 :].rsplit("/", 1)[0] for f in found)
    raise InputError(f"{url}: several indexes under index/ ({choices}); pass one of them")
