"""fsspec-backed storage: every path is a URL (plain path, file://, s3://), every write is atomic.

A table is a directory of Parquet parts. Each part is written under a temporary name and then moved
to its final name, so a part either exists whole or not at all; a crashed writer leaves only
temporary files, which readers ignore. On object stores (S3, GCS, Azure) a single PUT is already
atomic (the object appears whole on completion, multipart uploads included), so the part is written
under its final key in one request. `_manifest.json` is written last and marks the table complete.
Parts are independent files, so many Ray actors can commit parts of one table at once without a
shared mutable manifest, and a rerun skips every part that is already committed.

Writers checksum what they write: `PartitionedTable.write_part` hashes the bytes it is about to
store and returns their record (rows, bytes, sha256, schema), and also commits that record beside
the part (`_part-NNNNN.json`, after the part, so a record always describes a whole part). The
driver assembles the manifest from the records its tasks returned, plus the records of parts a
previous (killed) run committed: nothing is read back to finalise a table.

S3 endpoints and credentials come from the usual AWS environment (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, ...), so a MinIO or moto server works without code changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import tempfile
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs as _url_to_fs

from xqg_ray.errors import InputError, StorageError

MANIFEST = "_manifest.json"
PART_PATTERN = re.compile(r"^part-(?P<name>[A-Za-z0-9_.=-]+)\.parquet$")
RECORD_PATTERN = re.compile(r"^_part-(?P<name>[A-Za-z0-9_.=-]+)\.json$")
OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs")
_CHECKED_BUCKETS: set[str] = set()


def url_to_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and path for a URL; errors name the URL instead of a protocol internals."""
    if not url:
        raise StorageError("empty path or URL")
    try:
        return _url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"{url}: cannot open this URL: {exc}") from exc


def protocol(url: str) -> str:
    fs, _ = url_to_fs(url)
    proto = fs.protocol
    return proto[0] if isinstance(proto, (tuple, list)) else proto


def is_local(url: str) -> bool:
    return protocol(url) in ("file", "local")


def join(url: str, *parts: str) -> str:
    """Join path segments onto a URL without dropping its scheme."""
    out = url.rstrip("/")
    for part in parts:
        out = posixpath.join(out, part.strip("/"))
    return out


def exists(url: str) -> bool:
    fs, path = url_to_fs(url)
    try:
        return fs.exists(path)
    except (PermissionError, OSError) as exc:
        raise StorageError(f"{url}: cannot check existence: {exc}") from exc


def is_object_store(url: str) -> bool:
    return protocol(url) in OBJECT_STORES


def _check_bucket(url: str) -> None:
    """On object stores, a missing bucket gives a clearer error than the first failed write.

    Checked once per bucket and process: a part write costs one request, not two."""
    fs, path = url_to_fs(url)
    if protocol(url) not in OBJECT_STORES:
        return
    bucket = path.split("/", 1)[0]
    if f"{protocol(url)}://{bucket}" in _CHECKED_BUCKETS:
        return
    try:
        ok = fs.exists(bucket)
    except (PermissionError, OSError) as exc:
        raise StorageError(f"{url}: cannot reach bucket {bucket!r}: {exc}") from exc
    if not ok:
        raise StorageError(f"{url}: bucket {bucket!r} does not exist")
    _CHECKED_BUCKETS.add(f"{protocol(url)}://{bucket}")


def read_bytes(url: str) -> bytes:
    fs, path = url_to_fs(url)
    try:
        with fs.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError as exc:
        raise StorageError(f"{url}: no such file") from exc
    except (PermissionError, OSError) as exc:
        raise StorageError(f"{url}: cannot read: {exc}") from exc


def read_text(url: str) -> str:
    data = read_bytes(url)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{url}: invalid UTF-8 at byte {exc.start} (line {line})") from exc


def read_json(url: str) -> Any:
    text = read_text(url)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{url}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc


def _tmp_name(path: str) -> str:
    head, tail = posixpath.split(path)
    return posixpath.join(head, f".tmp-{uuid.uuid4().hex}-{tail}")


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write to a temporary sibling, then move into place: readers never see half a file.

    On object stores one PUT is atomic by itself: the object is written under its final key."""
    _check_bucket(url)
    fs, path = url_to_fs(url)
    if is_object_store(url):
        try:
            with fs.open(path, "wb") as handle:
                handle.write(data)
        except (PermissionError, OSError) as exc:
            raise StorageError(f"{url}: cannot write: {exc}") from exc
        return
    parent = posixpath.dirname(path)
    tmp = _tmp_name(path)
    try:
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(tmp, "wb") as handle:
            handle.write(data)
        if is_local(url):
            os.replace(tmp, path)
        else:
            fs.mv(tmp, path)
    except (PermissionError, OSError) as exc:
        _remove_quietly(fs, tmp)
        raise StorageError(f"{url}: cannot write: {exc}") from exc


def put_file_atomic(local_path: str, url: str) -> None:
    """Commit a local file to `url` as `write_bytes_atomic` would, without holding it in memory
    (a temporary sibling then a rename locally; one upload on object stores)."""
    _check_bucket(url)
    fs, path = url_to_fs(url)
    try:
        if is_object_store(url):
            fs.put_file(local_path, path)
            return
        parent = posixpath.dirname(path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        tmp = _tmp_name(path)
        try:
            fs.put_file(local_path, tmp)
            os.replace(tmp, path)
        except BaseException:
            _remove_quietly(fs, tmp)
            raise
    except (PermissionError, OSError) as exc:
        raise StorageError(f"{url}: cannot write: {exc}") from exc


def write_text_atomic(url: str, text: str) -> None:
    write_bytes_atomic(url, text.encode("utf-8"))


def write_json_atomic(url: str, obj: Any) -> None:
    write_text_atomic(url, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _remove_quietly(fs: fsspec.AbstractFileSystem, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm(path)
    except OSError:
        pass


def sha256_of(url: str) -> str:
    fs, path = url_to_fs(url)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_copy(url: str, dest_dir: str | None = None) -> str:
    """A local path for `url`: itself when local, else a copy (file or directory) on local disk.

    FAISS and transformers read local files; remote objects are copied once per destination.
    """
    if is_local(url):
        fs, path = url_to_fs(url)
        if not fs.exists(path):
            raise StorageError(f"{url}: no such file or directory")
        return path
    fs, path = url_to_fs(url)
    if not fs.exists(path):
        raise StorageError(f"{url}: no such file or directory")
    dest_root = dest_dir or tempfile.mkdtemp(prefix="xqg-ray-")
    target = os.path.join(dest_root, posixpath.basename(path.rstrip("/")))
    if fs.isdir(path):
        fs.get(path.rstrip("/") + "/", target, recursive=True)
    else:
        os.makedirs(dest_root, exist_ok=True)
        tmp = target + f".tmp-{uuid.uuid4().hex}"
        fs.get(path, tmp)
        os.replace(tmp, target)
    return target


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


class PartitionedTable:
    """A directory of atomically committed Parquet parts, completed by a manifest.

    Part names are chosen by the writer (for example a zero-padded block number), so a rerun
    that plans the same blocks finds the committed ones and writes only what is missing.
    """

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def part_url(self, name: str) -> str:
        return join(self.url, f"part-{name}.parquet")

    @property
    def manifest_url(self) -> str:
        return join(self.url, MANIFEST)

    def record_url(self, name: str) -> str:
        return join(self.url, f"_part-{name}.json")

    def _listing(self) -> tuple[set[str], set[str]]:
        """(part names, record names) from one listing of the table's folder."""
        fs, path = url_to_fs(self.url)
        try:
            entries = fs.ls(path, detail=False) if fs.exists(path) else []
        except FileNotFoundError:
            return set(), set()
        parts, records = set(), set()
        for entry in entries:
            base = posixpath.basename(entry.rstrip("/"))
            if match := PART_PATTERN.match(base):
                parts.add(match.group("name"))
            elif match := RECORD_PATTERN.match(base):
                records.add(match.group("name"))
        return parts, records

    def committed_parts(self) -> list[str]:
        """Names of parts whose final file exists (temporary files are not parts)."""
        return sorted(self._listing()[0])

    def recorded_parts(self) -> list[str]:
        """Parts that are committed together with their writer's record: the finished ones.

        A part without a record (its writer died between the two) is recomputed on resume."""
        parts, records = self._listing()
        return sorted(parts & records)

    def write_part(self, name: str, table: pa.Table) -> dict[str, Any]:
        """Commit part `name` and its record; returns the record (rows, bytes, sha256, schema),
        hashed from the bytes written, so nobody has to read the part back to checksum it."""
        if not PART_PATTERN.match(f"part-{name}.parquet"):
            raise StorageError(f"{self.url}: invalid part name {name!r}")
        data = table_to_parquet_bytes(table)
        record = {
            "rows": table.num_rows,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "schema": table.schema.to_string(show_schema_metadata=False),
        }
        write_bytes_atomic(self.part_url(name), data)
        write_json_atomic(self.record_url(name), record)
        return record

    def read_record(self, name: str) -> dict[str, Any]:
        """The writer's record of a committed part (a legacy part without one is hashed)."""
        url = self.record_url(name)
        if exists(url):
            return read_json(url)
        meta_pq = self._part_metadata(name)
        return {
            "rows": meta_pq.num_rows,
            "sha256": sha256_of(self.part_url(name)),
            "schema": meta_pq.schema.to_arrow_schema().to_string(show_schema_metadata=False),
        }

    def manifest(self) -> dict[str, Any] | None:
        return read_json(self.manifest_url) if exists(self.manifest_url) else None

    def is_complete(self) -> bool:
        manifest = self.manifest()
        return bool(manifest and manifest.get("complete"))

    def finalize(
        self,
        meta: dict[str, Any] | None = None,
        expected: list[str] | None = None,
        records: dict[str, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Write the manifest from the writers' records and mark the table complete.

        `records` are what `write_part` returned in this run (part name -> record); parts
        committed earlier contribute the record their writer stored beside them. No part is
        read. `expected` lists the parts the writer planned; finalising with any of them missing
        is an error, so a table can never be marked complete with a gap.
        """
        records = dict(records or {})
        names = sorted(records)
        if expected is not None:
            unknown = sorted(set(expected) - set(records))
            if unknown:
                committed = self._listing()[0]
                missing = [name for name in unknown if name not in committed]
                if missing:
                    raise StorageError(
                        f"{self.url}: cannot finalise, {len(missing)} planned parts are missing "
                        f"(first: {missing[0]})"
                    )
            names = sorted(expected)
        elif not records:
            names = self.committed_parts()
        parts = {}
        schema = None
        for name in names:
            record = records.get(name) or self.read_record(name)
            parts[name] = {"rows": int(record["rows"]), "sha256": record["sha256"]}
            if "bytes" in record:
                parts[name]["bytes"] = int(record["bytes"])
            schema = schema or record.get("schema")
        manifest = {
            "complete": True,
            "parts": parts,
            "rows": sum(p["rows"] for p in parts.values()),
            "bytes": sum(p.get("bytes", 0) for p in parts.values()),
            "schema": schema,
            "meta": meta or {},
        }
        write_json_atomic(self.manifest_url, manifest)
        return manifest

    def _part_metadata(self, name: str) -> pq.FileMetaData:
        url = self.part_url(name)
        fs, path = url_to_fs(url)
        try:
            with fs.open(path, "rb") as handle:
                return pq.ParquetFile(handle).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(
                f"{url}: corrupt Parquet part ({exc}); delete this file and rerun to recompute it"
            ) from exc

    def read_part(self, name: str, columns: list[str] | None = None) -> pa.Table:
        url = self.part_url(name)
        fs, path = url_to_fs(url)
        try:
            with fs.open(path, "rb") as handle:
                return pq.read_table(handle, columns=columns)
        except FileNotFoundError as exc:
            raise StorageError(f"{url}: part is missing") from exc
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(
                f"{url}: corrupt Parquet part ({exc}); delete this file and rerun to recompute it"
            ) from exc

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """All parts in name order; a complete table reads exactly the parts its manifest lists."""
        manifest = self.manifest()
        names = sorted(manifest["parts"]) if manifest else self.committed_parts()
        if not names:
            raise StorageError(f"{self.url}: no committed parts (has this stage run?)")
        tables = [self.read_part(name, columns) for name in names]
        try:
            return pa.concat_tables(tables, promote_options="default")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InputError(f"{self.url}: parts have incompatible schemas: {exc}") from exc


def write_table(
    url: str, table: pa.Table, rows_per_part: int = 100_000, meta: dict[str, Any] | None = None
) -> dict:
    """Write a whole table as numbered parts plus a manifest (for small, single-process stages)."""
    target = PartitionedTable(url)
    records = {}
    for number, start in enumerate(range(0, max(table.num_rows, 1), rows_per_part)):
        name = f"{number:05d}"
        records[name] = target.write_part(name, table.slice(start, rows_per_part))
    return target.finalize(meta=meta, expected=sorted(records), records=records)


def read_table(url: str, columns: list[str] | None = None) -> pa.Table:
    """Read a part directory written by this module, or a single Parquet file."""
    fs, path = url_to_fs(url)
    if fs.isfile(path):
        try:
            with fs.open(path, "rb") as handle:
                return pq.read_table(handle, columns=columns)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{url}: not a readable Parquet file: {exc}") from exc
    if not fs.exists(path):
        raise StorageError(f"{url}: no such table")
    return PartitionedTable(url).read(columns)
