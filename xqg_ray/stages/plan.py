"""Split the passages and queries of a run into numbered parts, the unit of work and of resume.

Every per-passage stage maps collection part N to its own part N, so a stage reads its inputs by
path, never needs a join across parts, and a rerun recomputes only the parts that are missing.
"""

from __future__ import annotations

from collections.abc import Iterable

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


def with_ids(table: pa.Table) -> pa.Table:
    """Prepend a global int64 `id`: the row's position, stable for a given corpus and selection."""
    return table.add_column(0, "id", pa.array(range(table.num_rows), type=pa.int64()))


def write_plan(table: pa.Table, url: str, rows_per_part: int, meta: dict) -> list[str]:
    """Write the planned parts once; a rerun with other parameters is refused, not mixed in."""
    target = PartitionedTable(url)
    names = [part_name(i) for i in range((table.num_rows + rows_per_part - 1) // rows_per_part)]
    plan_meta = {**meta, "rows_per_part": rows_per_part, "rows": table.num_rows}
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
    for number, name in enumerate(names):
        if name not in done:
            records[name] = target.write_part(
                name, table.slice(number * rows_per_part, rows_per_part)
            )
    target.finalize(meta=plan_meta, expected=names, records=records)
    return names
