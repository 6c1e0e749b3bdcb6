"""The in-memory corpus every dataset adapter returns: passages, queries and qrels as Arrow tables.

The base columns are exactly those of `xqg_ray.schema` (first, in that order, with those types), so
the tables can be written to the run root unchanged. Adapters may append optional columns:
queries `answers` (list<string>) and `group`; passages `group` and `context`. `group` is the id
shared by the parallel translations of one item, which lets a setting or a `max_passages` cut keep
whole parallel units.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray import schema
from xqg_ray.errors import InputError

OPTIONAL_COLUMNS: dict[str, dict[str, pa.DataType]] = {
    "passages": {"group": pa.string(), "context": pa.string()},
    "queries": {"answers": pa.list_(pa.string()), "group": pa.string()},
    "qrels": {},
}
BASE_SCHEMAS: dict[str, pa.Schema] = {
    "passages": schema.PASSAGES,
    "queries": schema.QUERIES,
    "qrels": schema.QRELS,
}
ID_FIELDS = {"passages": "pid", "queries": "qid"}


def build_table(kind: str, columns: Mapping[str, Sequence[Any] | pa.Array]) -> pa.Table:
    """A `kind` table ("passages", "queries", "qrels") with base columns first, typed exactly.

    Optional columns are appended in a fixed order when present; any other column is an error
    (a programming mistake in an adapter, not bad user data).
    """
    base = BASE_SCHEMAS[kind]
    optional = OPTIONAL_COLUMNS[kind]
    unknown = set(columns) - set(base.names) - set(optional)
    if unknown:
        raise ValueError(f"{kind}: unexpected columns {sorted(unknown)}")
    fields = list(base) + [pa.field(n, t) for n, t in optional.items() if n in columns]
    target = pa.schema(fields)
    arrays = [pa.array(columns[f.name], type=f.type) for f in fields]
    return pa.Table.from_arrays(arrays, schema=target)


def empty_table(kind: str) -> pa.Table:
    return BASE_SCHEMAS[kind].empty_table()


def check_table(table: pa.Table, kind: str, source: str, first_row: int = 0) -> None:
    """Base columns present and typed, ids unique and non-null, text non-empty.

    `source` names the table in errors (a file, or `corpus <name> passages`); `first_row` is the
    row number of the table's first row when it is a block of a larger file.
    """
    base = BASE_SCHEMAS[kind]
    for position, expected in enumerate(base):
        if position >= table.num_columns or table.schema.field(position).name != expected.name:
            raise InputError(
                f"{source}: column {position} must be {expected.name!r} "
                f"(base columns {base.names} first), got {table.schema.names}"
            )
        actual = table.schema.field(position).type
        if actual != expected.type:
            raise InputError(f"{source}: column {expected.name!r} is {actual}, not {expected.type}")
    for field in base.names:
        nulls = pc.is_null(table[field])
        if pc.any(nulls).as_py():
            row = _first_true(nulls)
            raise InputError(f"{source}: row {row + first_row}: field {field!r} is missing (null)")
    if kind in ID_FIELDS:
        _check_unique(table, ID_FIELDS[kind], source, first_row)
        blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(table["text"])), 0)
        if pc.any(blank).as_py():
            row = _first_true(blank)
            ident = table[ID_FIELDS[kind]][row].as_py()
            raise InputError(
                f"{source}: row {row + first_row} ({ID_FIELDS[kind]} {ident!r}): "
                "field 'text' is empty"
            )


def _check_unique(table: pa.Table, field: str, source: str, first_row: int = 0) -> None:
    column = table[field]
    if len(pc.unique(column)) == len(column):
        return
    seen: dict[str, int] = {}
    for row, value in enumerate(column.to_pylist(), start=first_row):
        if value in seen:
            raise InputError(
                f"{source}: row {row}: duplicate {field} {value!r} (first at row {seen[value]})"
            )
        seen[value] = row


class UniqueIds:
    """Checks that ids are unique across the blocks of a streamed file while holding 8 bytes per
    id (a 64-bit hash), not the ids: only when two hashes are equal are the ids read again
    (`check`) to tell a real duplicate, reported with its row, from a hash collision."""

    def __init__(self, field: str, source: str):
        self.field = field
        self.source = source
        self.hashes: list[np.ndarray] = []

    def add(self, ids: pa.Array | pa.ChunkedArray) -> None:
        from pandas.util import hash_array

        self.hashes.append(hash_array(np.asarray(ids.to_pylist(), dtype=object)))

    def check(self, reread: Callable[[], Iterable[pa.Array | pa.ChunkedArray]]) -> None:
        """Raise InputError naming the first duplicate's row; `reread` gives the ids again,
        block by block, and is called only when two hashes are equal."""
        hashes = np.sort(np.concatenate(self.hashes)) if self.hashes else np.zeros(0, np.uint64)
        repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
        if not len(repeated):
            return
        from pandas.util import hash_array

        seen: dict[str, int] = {}
        row = 0
        for block in reread():
            ids = np.asarray(block.to_pylist(), dtype=object)
            for offset in np.flatnonzero(np.isin(hash_array(ids), repeated)):
                value = ids[offset]
                if value in seen:
                    raise InputError(
                        f"{self.source}: row {row + offset}: duplicate {self.field} {value!r} "
                        f"(first at row {seen[value]})"
                    )
                seen[value] = row + int(offset)
            row += len(ids)


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    return pc.indices_nonzero(pc.fill_null(mask, False))[0].as_py()


@dataclass
class Corpus:
    """Passages, queries and relevance judgements of one dataset (qrels may be empty)."""

    passages: pa.Table
    queries: pa.Table
    qrels: pa.Table
    name: str

    def validate(self) -> Corpus:
        """Raise InputError naming table, row and field for the first inconsistency found."""
        for kind in ("passages", "queries", "qrels"):
            check_table(getattr(self, kind), kind, f"corpus {self.name!r} {kind}")
        for field, table, kind in (
            ("qid", self.queries, "queries"),
            ("pid", self.passages, "passages"),
        ):
            unknown = pc.invert(
                pc.is_in(self.qrels[field], value_set=table[field].combine_chunks())
            )
            if pc.any(unknown).as_py():
                row = _first_true(unknown)
                value = self.qrels[field][row].as_py()
                raise InputError(
                    f"corpus {self.name!r} qrels: row {row}: field {field!r} refers to "
                    f"{value!r}, which is not in {kind}"
                )
        return self

    @property
    def languages(self) -> list[str]:
        """Languages of passages and queries, sorted."""
        langs = set(self.passages["lang"].to_pylist()) | set(self.queries["lang"].to_pylist())
        return sorted(langs)

    def restrict(
        self,
        passage_mask: pa.ChunkedArray | pa.Array | None = None,
        query_mask: pa.ChunkedArray | pa.Array | None = None,
    ) -> Corpus:
        """Keep masked passages and queries, the qrels between them, and only judged queries.

        Queries left without any relevant passage are dropped only when the corpus has qrels:
        without qrels (XOR-Retrieve, evaluated with answers) every query stays.
        """
        passages = self.passages if passage_mask is None else self.passages.filter(passage_mask)
        queries = self.queries if query_mask is None else self.queries.filter(query_mask)
        qrels = self.qrels
        if qrels.num_rows:
            keep = pc.and_(
                pc.is_in(qrels["pid"], value_set=passages["pid"].combine_chunks()),
                pc.is_in(qrels["qid"], value_set=queries["qid"].combine_chunks()),
            )
            qrels = qrels.filter(keep)
            queries = queries.filter(
                pc.is_in(queries["qid"], value_set=qrels["qid"].combine_chunks())
            )
        return replace(self, passages=passages, queries=queries, qrels=qrels)


def qrels_table(pairs: Iterable[tuple[str, str]]) -> pa.Table:
    """Binary qrels (relevance 1) from (qid, pid) pairs."""
    qids, pids = [], []
    for qid, pid in pairs:
        qids.append(qid)
        pids.append(pid)
    return build_table("qrels", {"qid": qids, "pid": pids, "relevance": [1] * len(qids)})
