"""The pipeline throughput benchmark: its synthetic corpus, its arithmetic, and a tiny local run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from xqg_ray.bench.builds import Pool, ray_layout
from xqg_ray.bench.pipeline_throughput import compare, main
from xqg_ray.bench.synthetic import synthetic_corpus
from xqg_ray.datasets import load_generic

PASSAGE_STAGES = (
    "generate",
    "encode-passages",
    "encode-generated",
    "augment-xqg",
    "augment-expand",
    "augment-multivector",
)


def xquad_contexts(xquad_dir: Path) -> dict[str, str]:
    """Every context of a language joined into one string, to check passages are drawn from it."""
    joined = {}
    for file in xquad_dir.glob("xquad.*.json"):
        data = json.loads(file.read_text(encoding="utf-8"))["data"]
        joined[file.name.split(".")[1]] = "\n".join(
            p["context"] for a in data for p in a["paragraphs"]
        )
    return joined


def test_synthetic_corpus_is_deterministic_xquad_text_and_loads_as_generic(tmp_path, shared_data):
    xquad = shared_data / "xquad"
    first = synthetic_corpus(tmp_path / "a", 50, str(xquad), queries=4, seed=3)
    second = synthetic_corpus(tmp_path / "b", 50, str(xquad), queries=4, seed=3)
    other_seed = synthetic_corpus(tmp_path / "c", 50, str(xquad), queries=4, seed=4)
    table = pq.read_table(first["passages"])
    assert table.equals(pq.read_table(second["passages"]))
    assert not table.equals(pq.read_table(other_seed["passages"]))

    contexts = xquad_contexts(xquad)
    assert table.num_rows == 50
    assert set(table["lang"].to_pylist()) == set(contexts)  # every language takes its turn
    for row in table.to_pylist():
        # every passage starts with verbatim text of a context in its own language
        assert row["text"][:20] in contexts[row["lang"]], row
        assert len(row["text"]) > 40, row  # two sentences of at least 20 characters or more

    corpus = load_generic(first["passages"], first["queries"], first["qrels"])
    assert corpus.passages.num_rows == 50 and corpus.queries.num_rows == 4
    judged = zip(corpus.qrels["qid"].to_pylist(), corpus.qrels["pid"].to_pylist(), strict=True)
    assert sorted(judged) == [(f"q{i}", table["pid"][i].as_py()) for i in range(4)]


def test_compare_reports_rates_ratio_and_overhead():
    local = {
        "stages": {"generate": {"seconds": 10.0}, "encode-queries": {"seconds": 1.0, "rows_in": 8}}
    }
    ray_run = {
        "layout": {"generate": {"actors": 2}, "encode": {"actors": 1}},
        "stages": {
            "generate": {"seconds": 12.5, "task_seconds": 20.0, "parts_computed": 4},
            "encode-queries": {"seconds": 4.0, "rows_in": 8},
        },
    }
    rows = {row["stage"]: row for row in compare(local, ray_run, passages=100)}
    generate = rows["generate"]
    assert generate["local_per_second"] == pytest.approx(10.0)  # 100 passages / 10 s
    assert generate["ray_per_second"] == pytest.approx(8.0)  # 100 / 12.5
    assert generate["ratio"] == pytest.approx(0.8)
    assert generate["ray_overhead"] == pytest.approx(0.2)
    assert generate["ray_outside_tasks_seconds"] == pytest.approx(12.5 - 20.0 / 2)
    assert rows["encode-queries"]["unit"] == "queries"
    assert rows["encode-queries"]["ray_per_second"] == pytest.approx(2.0)  # 8 queries / 4 s
    total = rows["total (stages + index)"]
    assert total["ray_overhead"] == pytest.approx(1 - 11.0 / 16.5)  # time-weighted, not a mean
    assert total["ray_outside_tasks_seconds"] == pytest.approx(2.5)  # stages that report tasks


def test_ray_layout_parses_shared_and_per_stage_pools():
    shared = ray_layout("3x2", actor_num_cpus=0.5)
    assert (shared.name, shared.ray) == ("ray-3x2", True)
    assert shared.generate == shared.encode == Pool(actors=3, threads=2)
    split = ray_layout("2x1:1x2", actor_num_cpus=0.5)
    assert (split.generate, split.encode) == (Pool(2, 1), Pool(1, 2))
    for bad in ("two", "2x1:", "2x1:1y2"):
        with pytest.raises(ValueError, match="ACTORSxTHREADS"):
            ray_layout(bad, actor_num_cpus=0.5)


def test_main_runs_the_local_pipeline_and_writes_results(tmp_path, tiny_models, shared_data):
    out = tmp_path / "results.json"
    results = main(
        [
            "--passages", "40",
            "--out", str(out),
            "--ray-layouts", "",
            "--passages-per-part", "16",
            "--xquad-dir", str(shared_data / "xquad"),
            "--models-dir", str(Path(tiny_models["mt5"]).parent),
        ]
    )  # fmt: skip
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(results))
    assert {"benchmark", "note", "machine", "config", "runs", "comparisons", "target"} <= set(
        written
    )
    assert "tiny random-weight" in written["note"]
    assert written["machine"]["cpu_count"] >= 1 and written["machine"]["versions"]["ray"]
    assert written["config"]["ray"]["enabled"] is False
    local = written["runs"]["local"]
    assert local["ray_startup_seconds"] is None and local["build_seconds"] > 0
    for stage in PASSAGE_STAGES:
        stats = local["stages"][stage]
        assert stats["parts"] == 3 and stats["seconds"] > 0, stage  # 40 passages / 16 per part
        assert stats["rows_per_second"] > 0, stage
    assert local["stages"]["generate"]["rows_in"] == 40
    for strategy in ("dense", "xqg", "expand", "multivector"):
        assert local["stages"][f"index-{strategy}"]["seconds"] > 0
    assert written["comparisons"] == {}
