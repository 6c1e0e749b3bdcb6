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


def _generic_files(folder):
    import pyarrow.parquet as pq

    n = 250
    passages = corpus(n)
    pq.write_table(passages, folder / "passages.parquet", row_group_size=40)
    queries = pa.table(
        {
            "qid": [f"q{i}" for i in range(12)],
            "text": [f"question {i}" for i in range(12)],
            "lang": ["en", "de", "ar"] * 4,
        }
    )
    pq.write_table(queries, folder / "queries.parquet")
    # queries 0..9 judged (one per passage), 10 and 11 unjudged
    lines = [f"q{i} 0 p{i * 7} 1" for i in range(10)]
    (folder / "qrels.txt").write_text("\n".join(lines) + "\n")
    return {k: str(folder / f) for k, f in
            (("passages", "passages.parquet"), ("queries", "queries.parquet"),
             ("qrels", "qrels.txt"))}  # fmt: skip


@pytest.mark.parametrize("languages", [None, ["de", "en"]])
def test_streamed_ingest_writes_the_tables_the_whole_corpus_load_writes(
    tmp_path, monkeypatch, languages
):
    from xqg_ray.config import RunConfig
    from xqg_ray.paths import RunPaths
    from xqg_ray.stages import ingest as ingest_stage

    files = _generic_files(tmp_path)
    monkeypatch.setattr(ingest_stage, "INGEST_BLOCK", 60)  # several blocks and parts

    def run(root: str, streamed: bool):
        cfg = RunConfig.model_validate(
            {"root": root, "dataset": {"name": "generic", "languages": languages, **files}}
        )
        assert ingest_stage.streams(cfg.dataset)
        if not streamed:
            monkeypatch.setattr(ingest_stage, "streams", lambda dataset: False)
        counts = ingest_stage.ingest(cfg)
        monkeypatch.undo()
        monkeypatch.setattr(ingest_stage, "INGEST_BLOCK", 60)
        paths = RunPaths(root)
        return counts, {t: PartitionedTable(paths.corpus(t)).read() for t in counts}

    streamed_counts, streamed = run(str(tmp_path / "streamed"), True)
    whole_counts, whole = run(str(tmp_path / "whole"), False)
    assert streamed_counts == whole_counts
    for name in ("passages", "queries", "qrels"):
        assert streamed[name].equals(whole[name]), name
    parts = PartitionedTable(RunPaths(str(tmp_path / "streamed")).corpus("passages"))
    assert len(parts.committed_parts()) == 5  # 250 rows in blocks of 60


def test_streamed_ingest_finds_duplicate_ids_across_blocks(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from xqg_ray.config import RunConfig
    from xqg_ray.errors import InputError
    from xqg_ray.stages import ingest as ingest_stage

    table = corpus(100)
    pids = table["pid"].to_pylist()
    pids[90] = "p3"
    pq.write_table(table.set_column(0, "pid", pa.array(pids)), tmp_path / "p.parquet")
    monkeypatch.setattr(ingest_stage, "INGEST_BLOCK", 30)
    cfg = RunConfig.model_validate(
        {
            "root": str(tmp_path / "run"),
            "dataset": {"name": "generic", "passages": str(tmp_path / "p.parquet")},
        }
    )
    with pytest.raises(InputError, match=r"row 90: duplicate pid 'p3' \(first at row 3\)"):
        ingest_stage.ingest(cfg)


def _xor_tydi_files(folder, passages: int, duplicate_at: int | None = None) -> dict[str, str]:
    """A DPR-layout TSV (header in another column order) and JSON Lines queries in 3 languages."""
    import json

    pids = [str(i) for i in range(passages)]
    if duplicate_at is not None:
        pids[duplicate_at] = "7"
    lines = ["title\tid\ttext"] + [f"T{p}\t{p}\tpassage {p} text" for p in pids]
    (folder / "psgs.tsv").write_text("\n".join(lines) + "\n")
    queries = [
        {"id": f"q{i}", "question": f"question {i}?", "lang": ("ja", "ko", "te")[i % 3],
         "answers": [f"passage {i}"]}
        for i in range(12)
    ]  # fmt: skip
    (folder / "dev.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    return {"passages": str(folder / "psgs.tsv"), "queries": str(folder / "dev.jsonl")}


@pytest.mark.parametrize("languages", [None, ["ja", "te"]])
def test_xor_tydi_streams_the_tables_the_whole_load_writes(tmp_path, monkeypatch, languages):
    from xqg_ray.config import RunConfig
    from xqg_ray.paths import RunPaths
    from xqg_ray.stages import ingest as ingest_stage

    files = _xor_tydi_files(tmp_path, 130)
    monkeypatch.setattr(ingest_stage, "INGEST_BLOCK", 50)

    def run(root: str, streamed: bool):
        cfg = RunConfig.model_validate(
            {"root": root, "dataset": {"name": "xor_tydi", "languages": languages, **files}}
        )
        assert ingest_stage.streams(cfg.dataset)
        with monkeypatch.context() as patch:
            if not streamed:
                patch.setattr(ingest_stage, "streams", lambda dataset: False)
            counts = ingest_stage.ingest(cfg)
        return counts, {t: PartitionedTable(RunPaths(root).corpus(t)).read() for t in counts}

    streamed_counts, streamed = run(str(tmp_path / "streamed"), True)
    whole_counts, whole = run(str(tmp_path / "whole"), False)
    assert streamed_counts == whole_counts
    assert streamed_counts["passages"] == 130  # every passage stays: they are one collection
    assert streamed_counts["queries"] == (12 if languages is None else 8)
    for name in ("passages", "queries", "qrels"):
        assert streamed[name].equals(whole[name]), name
    parts = PartitionedTable(RunPaths(str(tmp_path / "streamed")).corpus("passages"))
    assert len(parts.committed_parts()) == 3  # 130 rows in blocks of 50


def test_xor_tydi_stream_finds_duplicates_across_blocks(tmp_path, monkeypatch):
    from xqg_ray.config import RunConfig
    from xqg_ray.errors import InputError
    from xqg_ray.stages import ingest as ingest_stage

    files = _xor_tydi_files(tmp_path, 130, duplicate_at=120)
    monkeypatch.setattr(ingest_stage, "INGEST_BLOCK", 50)
    cfg = RunConfig.model_validate(
        {"root": str(tmp_path / "run"), "dataset": {"name": "xor_tydi", **files}}
    )
    with pytest.raises(
        InputError, match=r"psgs.tsv: row 120: duplicate pid '7' \(first at row 7\)"
    ):
        ingest_stage.ingest(cfg)


def test_streamed_ingest_names_the_qrels_line_of_an_unknown_pid(tmp_path, monkeypatch):
    from xqg_ray.config import RunConfig
    from xqg_ray.errors import InputError
    from xqg_ray.stages import ingest as ingest_stage

    files = _generic_files(tmp_path)
    with open(files["qrels"], "a") as handle:
        handle.write("q10 0 nowhere 1\n")
    monkeypatch.setattr(ingest_stage, "INGEST_BLOCK", 60)
    cfg = RunConfig.model_validate(
        {"root": str(tmp_path / "run"), "dataset": {"name": "generic", **files}}
    )
    assert ingest_stage.streams(cfg.dataset)
    with pytest.raises(InputError, match=r"qrels.txt: line 11: field 'pid' refers to 'nowhere'"):
        ingest_stage.ingest(cfg)


def test_unique_ids_tells_a_hash_collision_from_a_duplicate():
    from xqg_ray.datasets.corpus import UniqueIds
    from xqg_ray.errors import InputError

    blocks = [pa.array(["a", "b"]), pa.array(["c", "d"])]
    unique = UniqueIds("pid", "p.parquet")
    for block in blocks:
        unique.add(block)
    unique.check(lambda: blocks)  # distinct hashes: nothing is read again
    unique.hashes[1][0] = unique.hashes[0][0]  # as if "c" hashed like "a"
    unique.check(lambda: blocks)  # a collision, not a duplicate
    blocks[1] = pa.array(["c", "a"])
    again = UniqueIds("pid", "p.parquet")
    for block in blocks:
        again.add(block)
    with pytest.raises(InputError, match=r"p.parquet: row 3: duplicate pid 'a' \(first at row 0\)"):
        again.check(lambda: blocks)
