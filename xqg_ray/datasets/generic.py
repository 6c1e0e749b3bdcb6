"""A user's own corpus: passages and queries as Parquet or JSON Lines, qrels in TREC format.

Passages: `pid`, `text`, optional `title` (default ""), `lang` (default "und"), `group`,
`context`. Queries: `qid`, `text`, optional `lang`, `answers` (list of strings), `group`.
Qrels: one `qid 0 pid relevance` line per judgement, whitespace separated. The format follows the
extension (.parquet/.pq, .jsonl, plus a compression suffix such as .jsonl.gz); every file is read
through fsspec, so s3:// URLs work like local paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xqg_ray.datasets.corpus import (
    BASE_SCHEMAS,
    OPTIONAL_COLUMNS,
    Corpus,
    build_table,
    check_table,
    empty_table,
)
from xqg_ray.datasets.readers import (
    file_format,
    iter_jsonl,
    iter_text_lines,
    open_binary,
    read_parquet,
    require,
    require_id,
)
from xqg_ray.errors import ConfigError, InputError

UNDETERMINED_LANGUAGE = "und"  # ISO 639-2 code for "undetermined"
DEFAULTS = {"title": "", "lang": UNDETERMINED_LANGUAGE}


def load_generic(
    passages: str, queries: str | None = None, qrels: str | None = None, name: str = "generic"
) -> Corpus:
    passage_table = read_records(passages, "passages")
    query_table = read_records(queries, "queries") if queries else empty_table("queries")
    if qrels and not queries:
        raise ConfigError(f"{qrels}: qrels need a queries file")
    qrels_table = (
        read_trec_qrels(
            qrels, set(query_table["qid"].to_pylist()), set(passage_table["pid"].to_pylist())
        )
        if qrels
        else empty_table("qrels")
    )
    return Corpus(passage_table, query_table, qrels_table, name).validate()


def read_records(url: str, kind: str) -> pa.Table:
    """A passages or queries table from a Parquet or JSONL file, checked row by row."""
    fmt = file_format(url)
    if fmt == "parquet":
        table = _from_parquet(url, kind)
    elif fmt == "jsonl":
        table = _from_jsonl(url, kind)
    else:
        raise InputError(f"{url}: {kind} must be Parquet or JSONL, not {fmt}")
    check_table(table, kind, url)
    return table


def _wanted_fields(kind: str) -> list[str]:
    return BASE_SCHEMAS[kind].names + list(OPTIONAL_COLUMNS[kind])


def _column_type(kind: str, field: str) -> pa.DataType:
    base = BASE_SCHEMAS[kind]
    return base.field(field).type if field in base.names else OPTIONAL_COLUMNS[kind][field]


def _from_parquet(url: str, kind: str) -> pa.Table:
    return _convert(read_parquet(url), url, kind)


def iter_parquet_passages(url: str, block_rows: int = 100_000) -> Iterator[pa.Table]:
    """The passages of a Parquet file in blocks of at most `block_rows`, each converted and
    checked like `read_records` does (errors count rows from the file's start); ids are unique
    within a block, across blocks the caller checks (`corpus.check_unique`)."""
    with open_binary(url) as handle:
        try:
            # one block at a time, decoded in this thread: the threaded reader reads ahead and
            # its buffers stay with the allocator, which made the driver grow with the file
            file = pq.ParquetFile(handle, pre_buffer=False, buffer_size=1 << 20)
            first = 0
            for batch in file.iter_batches(batch_size=block_rows, use_threads=False):
                table = _convert(pa.Table.from_batches([batch]), url, "passages")
                check_table(table, "passages", url, first_row=first)
                first += table.num_rows
                yield table
            if first == 0:
                yield _convert(file.schema_arrow.empty_table(), url, "passages")
        except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{url}: not a readable Parquet file: {exc}") from exc


def _convert(raw: pa.Table, url: str, kind: str) -> pa.Table:
    columns: dict[str, Any] = {}
    for field in _wanted_fields(kind):
        if field in raw.column_names:
            wanted = _column_type(kind, field)
            try:
                columns[field] = pc.cast(raw[field], wanted).combine_chunks()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InputError(
                    f"{url}: column {field!r} is {raw.schema.field(field).type}, "
                    f"cannot read it as {wanted}: {exc}"
                ) from exc
        elif field in DEFAULTS:
            columns[field] = [DEFAULTS[field]] * raw.num_rows
        elif field in BASE_SCHEMAS[kind].names:
            raise InputError(f"{url}: missing column {field!r} (columns: {raw.column_names})")
    return build_table(kind, columns)


def _from_jsonl(url: str, kind: str) -> pa.Table:
    id_field = BASE_SCHEMAS[kind].names[0]
    optional = OPTIONAL_COLUMNS[kind]
    columns: dict[str, list[Any]] = {f: [] for f in _wanted_fields(kind)}
    seen_optional: set[str] = set()
    for number, record in iter_jsonl(url):
        where = f"{url}: line {number}"
        ident = require_id(record, id_field, where)
        text = require(record, "text", where)
        if not text.strip():
            raise InputError(f"{where} ({id_field} {ident!r}): field 'text' is empty")
        columns[id_field].append(ident)
        columns["text"].append(text)
        for field, default in DEFAULTS.items():
            if field in columns:
                present = record.get(field) is not None
                columns[field].append(require(record, field, where) if present else default)
        for field in optional:
            value = _optional(record, field, where)
            if value is not None:
                seen_optional.add(field)
            columns[field].append(value)
    for field in set(optional) - seen_optional:
        del columns[field]
    return build_table(kind, columns)


def _optional(record: dict[str, Any], field: str, where: str) -> Any:
    """An optional field, type-checked: `answers` is a list of strings, the rest are strings."""
    value = record.get(field)
    if value is None:
        return None
    if field == "answers":
        if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
            raise InputError(f"{where}: field 'answers' must be a list of strings")
        return value
    return require(record, field, where)


def read_trec_qrels(
    url: str, qids: set[str], pids: set[str] | pa.Array | pa.ChunkedArray | None
) -> pa.Table:
    """TREC qrels (`qid iteration pid relevance`), each id checked against the loaded tables.

    `pids` may be an Arrow array (a corpus-sized id column is then never turned into Python),
    or None when the caller checks the pids itself as it streams the passages
    (`unknown_pid_error` then names the line)."""
    rows: dict[str, list[Any]] = {"qid": [], "pid": [], "relevance": []}
    by_set = isinstance(pids, (set, frozenset))
    lines: list[int] = []
    for number, line in iter_text_lines(url):
        fields = line.split()
        if not fields:
            continue
        where = f"{url}: line {number}"
        if len(fields) != 4:
            raise InputError(f"{where}: expected 'qid 0 pid relevance', got {len(fields)} fields")
        qid, _, pid, relevance = fields
        try:
            rows["relevance"].append(int(relevance))
        except ValueError as exc:
            raise InputError(
                f"{where}: field 'relevance' must be an integer, got {relevance!r}"
            ) from exc
        if qid not in qids:
            raise InputError(f"{where}: field 'qid' refers to {qid!r}, which is not in the queries")
        if by_set and pid not in pids:
            raise InputError(
                f"{where}: field 'pid' refers to {pid!r}, which is not in the passages"
            )
        rows["qid"].append(qid)
        rows["pid"].append(pid)
        lines.append(number)
    table = build_table("qrels", rows)
    if pids is not None and not by_set and table.num_rows:
        unknown = pc.invert(pc.is_in(table["pid"], value_set=pids))
        if pc.any(unknown).as_py():
            row = pc.indices_nonzero(unknown)[0].as_py()
            raise InputError(
                f"{url}: line {lines[row]}: field 'pid' refers to {table['pid'][row].as_py()!r}, "
                "which is not in the passages"
            )
    return table


def unknown_pid_error(url: str, pid: str) -> InputError:
    """The error `read_trec_qrels` gives for a pid the passages do not hold, naming its line."""
    for number, line in iter_text_lines(url):
        fields = line.split()
        if len(fields) == 4 and fields[2] == pid:
            return InputError(
                f"{url}: line {number}: field 'pid' refers to {pid!r}, which is not in the passages"
            )
    return InputError(f"{url}: pid {pid!r} is not in the passages")
