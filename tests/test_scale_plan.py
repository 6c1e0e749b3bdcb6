"""Streaming plan: the corpus is read part by part, never whole, and the collection it writes is
the one `write_plan` writes from the whole table (same rows, ids, parts and manifest)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from xqg_ray.errors import ConfigError
from xqg_ray.stages import plan
from xqg_ray.storage import PartitionedTable, write_table

COLUMNS = ["pid", "lang", "title", "text"]


def corpus(n: int) -> pa.Table:
    langs = ["en", "de", "ar"]
    return pa.table(
        {
            "pid": [f"p{i}" for i in range(n)],
            "lang": [langs[i % 3] for i in range(n)],
            "title": [f"t{i}" for i in range(n)],
            "text": [f"text {i}" for i in range(n)],
        }
    )


@pytest.mark.parametrize("languages", [None, ["de", "en"], ["ar"]])
def test_stream_plan_equals_the_whole_table_plan(tmp_path, languages):
    table = corpus(103)
    write_table(str(tmp_path / "corpus"), table, rows_per_part=17)  # parts unlike the plan's
    source = PartitionedTable(str(tmp_path / "corpus"))
    streamed = plan.stream_plan(
        source, str(tmp_path / "streamed"), 10, {"x": 1}, languages, COLUMNS, "passages"
    )
    whole = plan.filter_languages(table, languages, "passages").select(COLUMNS)
    written = plan.write_plan(plan.with_ids(whole), str(tmp_path / "whole"), 10, {"x": 1})
    assert streamed == written
    a, b = PartitionedTable(str(tmp_path / "streamed")), PartitionedTable(str(tmp_path / "whole"))
    for name in written:
        assert a.read_part(name).equals(b.read_part(name))
    assert a.manifest() == b.manifest()
    # a rerun returns the planned parts; other parameters are refused
    assert (
        plan.stream_plan(
            source, str(tmp_path / "streamed"), 10, {"x": 1}, languages, COLUMNS, "passages"
        )
        == written
    )
    with pytest.raises(ConfigError, match="use a new run root"):
        plan.stream_plan(source, str(tmp_path / "streamed"), 9, {"x": 1}, languages, COLUMNS, "p")


def test_stream_plan_resumes_missing_parts_and_names_missing_languages(tmp_path):
    write_table(str(tmp_path / "corpus"), corpus(40), rows_per_part=7)
    source = PartitionedTable(str(tmp_path / "corpus"))
    target = PartitionedTable(str(tmp_path / "plan"))
    names = plan.stream_plan(source, target.url, 8, {}, None, COLUMNS, "passages")
    before = target.read()
    (tmp_path / "plan" / "_manifest.json").unlink()
    (tmp_path / "plan" / "part-00002.parquet").unlink()
    assert plan.stream_plan(source, target.url, 8, {}, None, COLUMNS, "passages") == names
    assert target.read().equals(before)
    with pytest.raises(ConfigError, match=r"no rows in language\(s\) \['fi'\]"):
        plan.stream_plan(source, str(tmp_path / "fi"), 8, {}, ["fi", "en"], COLUMNS, "passages")
