"""Reading user files (JSON, JSONL, TSV, Parquet) through fsspec with errors that point at the data.

Every failure names the file, and where it can the line, column, byte offset or field, so a user
can open the file at the right place instead of reading a traceback.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from xqg_ray.errors import InputError, StorageError

# Zero-width no-break spaces (byte-order marks) occur inside some XQuAD Thai/Chinese/Turkish texts;
# they carry no meaning and tokenizers map them to unknown tokens.
_BOM = "\ufeff"


def clean_text(text: str) -> str:
    return text.replace(_BOM, "").strip()


@contextmanager
def open_binary(url: str) -> Iterator[IO[bytes]]:
    """Open for reading, decompressing by extension (.gz, .bz2, ...); missing -> StorageError."""
    try:
        with fsspec.open(url, "rb", compression="infer") as handle:
            yield handle
    except FileNotFoundError as exc:
        raise StorageError(f"{url}: no such file") from exc
    except IsADirectoryError as exc:
        raise StorageError(f"{url}: is a directory, expected a file") from exc


def iter_text_lines(url: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line) pairs; invalid UTF-8 names the line and byte offset."""
    offset = 0
    with open_binary(url) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{url}: invalid UTF-8 at byte {offset + exc.start} (line {number})"
                ) from exc
            if number == 1:
                line = line.removeprefix(_BOM)
            offset += len(raw)
            yield number, line


def iter_jsonl(url: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSON Lines file."""
    for number, line in iter_text_lines(url):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{url}: malformed JSON at line {number} column {exc.colno}: {exc.msg}"
            ) from exc
        if not isinstance(record, dict):
            raise InputError(
                f"{url}: line {number}: expected a JSON object, got {type(record).__name__}"
            )
        yield number, record


def iter_tsv(url: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a tab-separated file with CSV quoting (DPR's psgs_w100.tsv)."""
    lines = (line for _, line in iter_text_lines(url))
    reader = csv.reader(lines, delimiter="\t")
    try:
        for fields in reader:
            if fields:
                yield reader.line_num, fields
    except csv.Error as exc:
        raise InputError(f"{url}: line {reader.line_num}: malformed TSV: {exc}") from exc


def read_parquet(url: str) -> pa.Table:
    with open_binary(url) as handle:
        try:
            table = pq.read_table(handle)
            table.schema.names  # noqa: B018 - a damaged file can hold names that are not UTF-8
            return table
        except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{url}: not a readable Parquet file: {exc}") from exc


def require(record: dict[str, Any], field: str, where: str, kind: type | None = str) -> Any:
    """`record[field]`, or InputError naming `where` (file and row) and the field."""
    if field not in record or record[field] is None:
        raise InputError(f"{where}: missing field {field!r}")
    value = record[field]
    if kind is not None and not isinstance(value, kind):
        raise InputError(
            f"{where}: field {field!r} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def require_id(record: dict[str, Any], field: str, where: str) -> str:
    """An identifier: a string, or an integer (Parquet/JSON ids are often numbers) as a string."""
    value = require(record, field, where, kind=None)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"{where}: field {field!r} must be a string or integer")
    return str(value)


def require_text(record: dict[str, Any], field: str, where: str) -> str:
    """A string field that must not be empty after cleaning."""
    text = clean_text(require(record, field, where))
    if not text:
        raise InputError(f"{where}: field {field!r} is empty")
    return text


def file_format(url: str) -> str:
    """ "parquet", "jsonl" or "tsv" from the extension, ignoring a compression suffix."""
    name = url.rsplit("/", 1)[-1].lower()
    for suffix in (".gz", ".bz2", ".xz", ".zst", ".zstd"):
        name = name.removesuffix(suffix)
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".tsv"):
        return "tsv"
    raise InputError(f"{url}: unknown file format; use .parquet/.pq, .jsonl(.gz) or .tsv(.gz)")
