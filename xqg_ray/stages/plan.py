"""Split the passages and queries of a run into numbered parts, the unit of work and of resume.

Every per-passage stage maps collection part N to its own part N, so a stage reads its inputs by
path, never needs a join across parts, and a rerun recomputes only the parts that are missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.errors import ConfigError
from xqg_ray.storage import PartitionedTable


def part_name(number: int) -> str:
    return f"{number:05d}"


def filter_languages(table: pa.Table, languages: Iterable[str] | None, what: str) -> pa.Table:
    if languages is None:
        return table
    wanted = list(languages)
    present = set(table["lang"].to_pylist())
    missing = [lang for lang in wanted if lang not in present]
    if missing:
        raise ConfigError(f"{what}: no rows in language(s) {missing}; available: {sorted(present)}")
    return table.filter(pc.is_in(table["lang"], pa.array(wanted)))


def with_ids(table: pa.Table, first: int = 0) -> pa.Table:
    """Prepend a global int64 `id`: the row's position, stable for a given corpus and selection."""
    ids = np.arange(first, first + table.num_rows, dtype=np.int64)
    return table.add_column(0, "id", pa.array(ids, type=pa.int64()))


def write_plan(table: pa.Table, url: str, rows_per_part: int, meta: dict) -> list[str]:
    """Write the planned parts once; a rerun with other parameters is refused, not mixed in."""
    blocks = (
        table.slice(start, rows_per_part) for start in range(0, table.num_rows, rows_per_part)
    )
    return _write_parts(url, table.num_rows, rows_per_part, meta, blocks)


def _write_parts(
    url: str, rows: int, rows_per_part: int, meta: dict, blocks: Iterator[pa.Table]
) -> list[str]:
    """Part N is the Nth block; parts already recorded are kept, and a complete plan made with
    other parameters is refused. `blocks` is read only while the plan is incomplete."""
    target = PartitionedTable(url)
    names = [part_name(i) for i in range((rows + rows_per_part - 1) // rows_per_part)]
    plan_meta = {**meta, "rows_per_part": rows_per_part, "rows": rows}
    existing = target.manifest()
    if existing and existing.get("complete"):
        if existing["meta"] != plan_meta:
            raise ConfigError(
                f"{url} was planned with {existing['meta']}, this run asks for {plan_meta}: "
                "use a new run root (or delete it) to change the collection"
            )
        return sorted(existing["parts"])
    done = set(target.recorded_parts())
    records = {}
    for number, block in enumerate(blocks):
        name = part_name(number)
        if name not in done:
            records[name] = target.write_part(name, block)
    target.finalize(meta=plan_meta, expected=names, records=records)
    return names


def _selected(table: pa.Table, languages: list[str] | None) -> pa.Table:
    if languages is None:
        return table
    return table.filter(pc.is_in(table["lang"], pa.array(languages, pa.string())))


def count_selected(source: PartitionedTable, languages: list[str] | None, what: str) -> int:
    """Rows of `source` in `languages`, reading only its `lang` column, part by part; a
    language with no rows is a ConfigError (as `filter_languages` says)."""
    manifest = source.manifest() or {}
    parts = sorted(manifest.get("parts") or source.committed_parts())
    if languages is None and manifest.get("parts"):
        return int(manifest["rows"])
    total, present = 0, set()
    for name in parts:
        langs = source.read_part(name, columns=["lang"])["lang"]
        present.update(pc.unique(langs).to_pylist())
        if languages is None:
            total += len(langs)
        else:
            total += pc.sum(pc.is_in(langs, pa.array(languages, pa.string()))).as_py() or 0
    missing = [lang for lang in languages or [] if lang not in present]
    if missing:
        raise ConfigError(f"{what}: no rows in language(s) {missing}; available: {sorted(present)}")
    return total


def stream_plan(
    source: PartitionedTable,
    url: str,
    rows_per_part: int,
    meta: dict,
    languages: list[str] | None,
    columns: list[str],
    what: str,
) -> list[str]:
    """`write_plan` without the corpus in memory: the source table's parts are read one at a
    time, filtered to `languages`, numbered with a running id and cut into parts of
    `rows_per_part` rows, so at most one source part and one planned part are held. The parts,
    ids and manifest are those `write_plan` writes for the whole table."""
    total = count_selected(source, languages, what)
    blocks = _blocks(source, languages, columns, rows_per_part)
    return _write_parts(url, total, rows_per_part, meta, blocks)


def _blocks(
    source: PartitionedTable, languages: list[str] | None, columns: list[str], size: int
) -> Iterator[pa.Table]:
    """The selected rows with running ids, in blocks of `size` rows (the last may be short)."""
    manifest = source.manifest() or {}
    pending: list[pa.Table] = []
    held = 0
    next_id = 0
    for name in sorted(manifest.get("parts") or source.committed_parts()):
        table = _selected(source.read_part(name), languages).select(columns)
        table = with_ids(table, next_id)
        next_id += table.num_rows
        pending.append(table)
        held += table.num_rows
        while held >= size:
            joined = pa.concat_tables(pending).combine_chunks()
            yield joined.slice(0, size)
            rest = joined.slice(size)
            pending, held = [rest], rest.num_rows
    if held:
        yield pa.concat_tables(pending).combine_chunks()
