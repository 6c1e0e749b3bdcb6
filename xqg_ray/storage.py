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

S3 faults (docs/reliability.md, "Faults in S3"). Every s3:// filesystem this module opens retries
transient failures (HTTP 5xx, `SlowDown` and other throttling, reset or refused connections,
timeouts) inside botocore, with backoff and jitter, set by the standard AWS variables:

- `AWS_MAX_ATTEMPTS`: attempts per request, the first included (default here: 10, botocore's own
  is 5 in legacy mode and 3 in standard mode);
- `AWS_RETRY_MODE`: `standard` (default here: exponential backoff with jitter, at most 20 s
  between attempts), `adaptive` (standard plus a client-side rate limiter that slows down after
  throttling), or `legacy`.

s3fs adds `S3FS_ROUNDS` (2) rounds of its own around them (they also cover a body cut mid-read,
which botocore leaves to its caller); connect and read timeouts are s3fs's (5 s and 15 s). When
a request still fails, the error is a `StorageError` that names the object's URL and says to
rerun (committed parts are kept) or raise `AWS_MAX_ATTEMPTS`. Like the credentials, the
variables must reach Ray's workers (a local Ray inherits the driver's environment).

Uploads to S3 are verified: each object is sent with its Content-MD5 (S3 refuses a body that
does not match), and the ETag S3 answers is compared with the MD5 of the bytes sent (where an
ETag is an MD5: not under SSE-KMS or SSE-C). A mismatch is uploaded once more, then refused. So
a part's record (its sha256) is only written after the part's own bytes are stored whole.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import posixpath
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs as _url_to_fs

from xqg_ray.errors import ConfigError, InputError, StorageError, XqgError

MANIFEST = "_manifest.json"
PART_PATTERN = re.compile(r"^part-(?P<name>[A-Za-z0-9_.=-]+)\.parquet$")
RECORD_PATTERN = re.compile(r"^_part-(?P<name>[A-Za-z0-9_.=-]+)\.json$")
OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs")
_CHECKED_BUCKETS: set[str] = set()


def url_to_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and path for a URL; errors name the URL instead of a protocol internals.

    s3:// filesystems get this module's retry settings (`s3_settings`)."""
    if not url:
        raise StorageError("empty path or URL")
    s3 = fsspec.core.split_protocol(url)[0] in S3_PROTOCOLS
    options = _s3_options() if s3 else {}
    try:
        fs, path = _url_to_fs(url, **options)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"{url}: cannot open this URL: {exc}") from exc
    if s3:
        fs.retries = S3FS_ROUNDS  # s3fs's rounds around botocore's attempts (an attribute only)
    return fs, path


# --- S3: retries, and errors that name the object and the setting ---

S3_PROTOCOLS = ("s3", "s3a")
S3_DEFAULT_MAX_ATTEMPTS = 10
S3_DEFAULT_RETRY_MODE = "standard"
S3FS_ROUNDS = 2
VERIFIED_PUT_MAX_BYTES = 64 << 20  # objects up to this size go in one PUT with a Content-MD5
_RETRY_MODES = ("standard", "adaptive", "legacy")
# error codes of transient failures: worth a rerun (or more attempts), not a change of input
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "ServiceUnavailable",
    "InternalError",
    "BadDigest",
    "XAmzContentSHA256Mismatch",
}


def s3_settings() -> dict[str, Any]:
    """The retry settings of this process's S3 clients (module docstring), from the environment."""
    raw = os.environ.get("AWS_MAX_ATTEMPTS", "").strip()
    try:
        attempts = int(raw) if raw else S3_DEFAULT_MAX_ATTEMPTS
    except ValueError:
        attempts = 0
    if attempts < 1:
        raise ConfigError(f"AWS_MAX_ATTEMPTS={raw!r}: expected a whole number >= 1")
    mode = os.environ.get("AWS_RETRY_MODE", "").strip() or S3_DEFAULT_RETRY_MODE
    if mode not in _RETRY_MODES:
        raise ConfigError(f"AWS_RETRY_MODE={mode!r}: expected one of {', '.join(_RETRY_MODES)}")
    return {"max_attempts": attempts, "retry_mode": mode, "s3fs_rounds": S3FS_ROUNDS}


def _s3_options() -> dict[str, Any]:
    settings = s3_settings()
    retries = {"max_attempts": settings["max_attempts"], "mode": settings["retry_mode"]}
    # no listings cache: a process's cached listing never sees other processes' parts
    return {"config_kwargs": {"retries": retries}, "use_listings_cache": False}


def _client_error(exc: BaseException) -> Any:
    """The botocore ClientError behind an exception (s3fs turns them into OSErrors), if any."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if hasattr(current, "response") and isinstance(current.response, dict):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _is_transient(exc: BaseException) -> bool:
    """A failure a retry may cure: a 5xx or throttling answer, a dropped connection, a timeout."""
    import asyncio

    try:
        from botocore.exceptions import (
            ConnectionError as BotoConnectionError,
        )
        from botocore.exceptions import (
            HTTPClientError,
            IncompleteReadError,
            ResponseStreamingError,
        )
    except ImportError:  # no botocore: no S3 either
        return False
    transport = (
        BotoConnectionError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
        asyncio.TimeoutError,
        ConnectionError,
    )
    current: BaseException | None = exc
    for _ in range(8):
        if current is None:
            break
        if isinstance(current, transport):
            return True
        current = current.__cause__ or current.__context__
    error = _client_error(exc)
    if error is None:
        return False
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return status >= 500 or error.response.get("Error", {}).get("Code") in _TRANSIENT_CODES


def _describe(exc: BaseException) -> str:
    error = _client_error(exc)
    if error is not None:
        details = error.response.get("Error", {})
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = details.get("Code", "?")
        return f"{code} (HTTP {status}): {details.get('Message') or exc}"
    return f"{type(exc).__name__}: {exc}"


def _failure(url: str, action: str, exc: BaseException) -> StorageError:
    """The StorageError for an I/O failure; on S3, a transient one names the setting to raise."""
    if not _is_transient(exc) or fsspec.core.split_protocol(url)[0] not in S3_PROTOCOLS:
        return StorageError(f"{url}: cannot {action}: {exc}")
    settings = s3_settings()
    return StorageError(
        f"{url}: cannot {action}: {_describe(exc)}; S3 still failed after "
        f"{settings['max_attempts']} attempts per request ({settings['retry_mode']} retries): "
        "rerun to resume (committed parts are kept), and if it persists raise AWS_MAX_ATTEMPTS "
        f"(now {settings['max_attempts']}) or set AWS_RETRY_MODE=adaptive"
    )


@contextmanager
def io_errors(url: str, action: str) -> Iterator[None]:
    """I/O errors as StorageErrors naming `url` (FileNotFoundError passes: callers word it).

    For code that must use the filesystem directly (a glob, a download): on S3 a transient
    failure that outlived the retries names the setting to raise, like this module's own I/O."""
    try:
        yield
    except (XqgError, FileNotFoundError):
        raise
    except Exception as exc:
        if isinstance(exc, OSError) or _is_transient(exc):
            raise _failure(url, action, exc) from exc
        raise


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
    with io_errors(url, "check existence"):
        return fs.exists(path)


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
    with io_errors(url, f"reach bucket {bucket!r}"):
        ok = fs.exists(bucket)
    if not ok:
        raise StorageError(f"{url}: bucket {bucket!r} does not exist")
    _CHECKED_BUCKETS.add(f"{protocol(url)}://{bucket}")


def read_bytes(url: str) -> bytes:
    fs, path = url_to_fs(url)
    try:
        with io_errors(url, "read"), fs.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError as exc:
        raise StorageError(f"{url}: no such file") from exc


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
        _put_object(fs, path, url, data)
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
    if is_object_store(url):
        size = os.path.getsize(local_path)
        if size <= VERIFIED_PUT_MAX_BYTES:
            with open(local_path, "rb") as handle:
                _put_object(fs, path, url, handle.read())
            return
        with io_errors(url, "write"):
            fs.put_file(local_path, path)
            stored = fs.info(path).get("size")
        if stored != size:
            raise StorageError(f"{url}: stored {stored} bytes of {size}: rerun to upload it again")
        return
    try:
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


def _put_object(fs: fsspec.AbstractFileSystem, path: str, url: str, data: bytes) -> None:
    """One PUT with its Content-MD5, and the answer's ETag checked against it (module docstring).

    Objects over `VERIFIED_PUT_MAX_BYTES` go as multipart uploads, whose ETag is no MD5."""
    md5 = hashlib.md5(data, usedforsecurity=False)
    options: dict[str, Any] = {}
    if len(data) <= VERIFIED_PUT_MAX_BYTES and protocol(url) in S3_PROTOCOLS:
        options["ContentMD5"] = base64.b64encode(md5.digest()).decode("ascii")
    etag = ""
    for _ in range(2):
        with io_errors(url, "write"):
            answer = fs.pipe_file(path, data, **options)
        etag = _md5_etag(answer)
        if etag is None or etag == md5.hexdigest():
            return
    raise StorageError(
        f"{url}: S3 stored other bytes than were sent, twice (ETag {etag}, MD5 sent "
        f"{md5.hexdigest()}): check the endpoint (AWS_ENDPOINT_URL) and any proxy in between"
    )


def _md5_etag(answer: Any) -> str | None:
    """The ETag of a PutObject answer where it is the body's MD5 (not under SSE-KMS or SSE-C)."""
    if not isinstance(answer, dict) or not answer.get("ETag"):
        return None
    if (
        answer.get("SSECustomerAlgorithm")
        or answer.get("ServerSideEncryption", "AES256") != "AES256"
    ):
        return None
    etag = str(answer["ETag"]).strip('"')
    return None if "-" in etag else etag


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
    with io_errors(url, "read"), fs.open(path, "rb") as handle:
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
    if not exists(url):
        raise StorageError(f"{url}: no such file or directory")
    dest_root = dest_dir or tempfile.mkdtemp(prefix="xqg-ray-")
    target = os.path.join(dest_root, posixpath.basename(path.rstrip("/")))
    with io_errors(url, "copy to local disk"):
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
            with io_errors(self.url, "list"):
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
            raise _unreadable_part(url, exc) from exc

    def read_part(self, name: str, columns: list[str] | None = None) -> pa.Table:
        url = self.part_url(name)
        fs, path = url_to_fs(url)
        try:
            with fs.open(path, "rb") as handle:
                return pq.read_table(handle, columns=columns)
        except FileNotFoundError as exc:
            raise StorageError(f"{url}: part is missing") from exc
        except (pa.ArrowInvalid, OSError) as exc:
            raise _unreadable_part(url, exc) from exc

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


def _unreadable_part(url: str, exc: BaseException) -> XqgError:
    """A part that cannot be read: corrupt, unless the storage failed (below)."""
    corrupt = f"{url}: corrupt Parquet part ({exc}); delete this file and rerun to recompute it"
    return _unreadable(url, exc, corrupt)


def _unreadable(url: str, exc: BaseException, corrupt: str) -> XqgError:
    """A transient storage failure is worth a rerun; anything else means the file is bad."""
    return _failure(url, "read", exc) if _is_transient(exc) else InputError(corrupt)


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
    with io_errors(url, "read"):
        is_file = fs.isfile(path)
    if is_file:
        try:
            with fs.open(path, "rb") as handle:
                return pq.read_table(handle, columns=columns)
        except (pa.ArrowInvalid, OSError) as exc:
            raise _unreadable(url, exc, f"{url}: not a readable Parquet file: {exc}") from exc
    if not exists(url):
        raise StorageError(f"{url}: no such table")
    return PartitionedTable(url).read(columns)
