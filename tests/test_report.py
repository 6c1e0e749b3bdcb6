"""Dev tuning, the cost and query-time probes and the report, on a tiny built run (no Ray).

The tiny models are random: figures here test the code paths, never retrieval quality or speed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from helpers import tiny_run_config

from xqg_ray.datasets.splits import DEV, GENERATION, TEST
from xqg_ray.evaluate import tuning
from xqg_ray.evaluate.driver import evaluate_settings
from xqg_ray.evaluate.tables import headline
from xqg_ray.paths import RunPaths
from xqg_ray.report import study
from xqg_ray.report.caveats import OFFICIAL_GENERATOR, generator_caveats
from xqg_ray.report.cost import (
    mean_output_tokens,
    measure_indexing_cost,
    mt5_lengths,
    strategy_costs,
    translator_reload,
    word_windows,
)
from xqg_ray.report.latency import measure_query_cost
from xqg_ray.report.literature import LAREQA_MBERT, xquad_r_section
from xqg_ray.report.render import opening, write_report
from xqg_ray.stages.pipeline import build
from xqg_ray.stages.roles import run_roles
from xqg_ray.storage import PartitionedTable, read_table, write_table

EXPERIMENT = "research"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config(root: str, tiny_models, shared_data, **extra):
    return tiny_run_config(
        root,
        tiny_models,
        shared_data,
        ray={"enabled": False},
        generator={"backend": "question_split", "languages": ["de"], "queries_per_language": 3},
        tuning={"dev_fraction": 0.3, "alphas": [0.01, 0.3], "reduces": ["sum", "mean"]},
        evaluate={"experiment": EXPERIMENT, "measures": ["R@1", "RR@10"]},
        cost={
            "generator_shape": tiny_models["mt5"],
            "encoder_shapes": ["configured"],
            "generation_seconds": 0.2,
            "encoding_seconds": 0.1,
            "latency_queries": 10,
        },
        **extra,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_models, shared_data):
    folder = tmp_path_factory.mktemp("research")
    cfg = _config(str(folder / "run"), tiny_models, shared_data)
    build(cfg)
    evaluation = evaluate_settings(cfg)
    return {"cfg": cfg, "evaluation": evaluation, "tuning": study.tune(cfg), "folder": folder}


def test_evaluation_reports_test_queries_only(run):
    cfg = run["cfg"]
    roles = run_roles(cfg)
    per_query = pa.parquet.read_table(
        Path(RunPaths(cfg.root).results(EXPERIMENT)) / "per_query.parquet"
    )
    scored = set(per_query["qid"].to_pylist())
    assert scored and {roles[q] for q in scored} == {TEST}
    planned = set(PartitionedTable(RunPaths(cfg.root).queryset).read()["qid"].to_pylist())
    assert {roles[q] for q in planned} == {DEV, TEST}  # generation questions are never evaluated
    assert run["evaluation"]["split"] == "test"


def test_stage_stats_record_the_engine_of_every_model_stage(run):
    paths = RunPaths(run["cfg"].root)
    stats = {
        s: json.loads(Path(paths.stats(s)).read_text()) for s in ("generate", "encode-passages")
    }
    assert stats["generate"]["engine"].startswith("lookup (question-split stand-in")
    assert stats["encode-passages"]["engine"]  # e.g. ctranslate2-int8 or torch-float32


def test_x_en_headline_averages_the_cross_lingual_language_only(run):
    dense = run["evaluation"]["strategies"]["dense"]
    assert dense["cross_lingual_languages"] == ["de"]
    assert dense["macro_cross_lingual"] == dense["per_lang"]["de"]
    assert "cross_lingual" in run["evaluation"]["strategies"]["xqg"]["ttest_vs_dense"]


def test_dev_grid_and_choice(run):
    result = run["tuning"]
    grid = {(row["reduce"], row["alpha"]): row for row in result["grid"]}
    assert set(grid) == {("sum", 0.0), ("sum", 0.01), ("sum", 0.3), ("mean", 0.01), ("mean", 0.3)}
    best = max(row["R@1"] for (_, alpha), row in grid.items() if alpha > 0)
    chosen = result["chosen"]
    assert grid[(chosen["reduce"], chosen["alpha"])]["R@1"] == best == chosen["dev_value"]
    assert result["dev_queries"] > 0 and result["test_queries"] > result["dev_queries"]
    assert set(result["test"]) == {"dense", tuning.PUBLISHED, tuning.CHOSEN}
    assert "ttest_vs_dense" in result["test"][tuning.CHOSEN]
    written = Path(RunPaths(run["cfg"].root).results(EXPERIMENT))
    assert (written / "xqg_tuning.png").read_bytes().startswith(PNG_MAGIC)


def test_published_setting_on_test_agrees_with_the_evaluation(run):
    # two code paths (exact re-mix here, the sharded index in the evaluation) on the same queries
    mixed = headline(run["tuning"]["test"][tuning.PUBLISHED])[0]
    indexed = headline(run["evaluation"]["strategies"]["xqg"])[0]
    dense = headline(run["tuning"]["test"]["dense"])[0]
    for measure in ("R@1", "RR@10"):
        assert mixed[measure] == pytest.approx(indexed[measure], abs=0.02)
        assert dense[measure] == pytest.approx(
            headline(run["evaluation"]["strategies"]["dense"])[0][measure], abs=0.02
        )


def test_the_dev_choice_never_reads_test_queries(run, tmp_path):
    """Scramble every test query's vector in a copy of the run: the dev grid and the choice stay
    exactly the same, while the test figures change."""
    cfg = run["cfg"]
    copy = tmp_path / "copy"
    shutil.copytree(cfg.root, copy)
    moved = cfg.model_copy(update={"root": str(copy)})
    url = RunPaths(str(copy)).embeddings(cfg.encoder.name, "queries")
    table = PartitionedTable(url).read()
    roles = run_roles(moved)
    vectors = np.stack(table["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)
    rng = np.random.default_rng(0)
    is_test = np.array([roles[q] == TEST for q in table["qid"].to_pylist()])
    vectors[is_test] = rng.standard_normal((int(is_test.sum()), vectors.shape[1]))
    scrambled = table.set_column(
        table.schema.get_field_index("vector"),
        "vector",
        pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
    )
    shutil.rmtree(copy / url.split(str(copy) + "/", 1)[1])
    write_table(url, scrambled, meta={})
    again = tuning.tune_xqg(moved)
    assert again["grid"] == run["tuning"]["grid"]
    assert again["chosen"] == run["tuning"]["chosen"]
    assert again["test"] != run["tuning"]["test"]


def test_no_generation_question_is_folded_into_the_evaluated_ones(run):
    cfg = run["cfg"]
    roles = run_roles(cfg)
    queries = read_table(RunPaths(cfg.root).corpus("queries"))
    text_role = {}
    for qid, text in zip(queries["qid"].to_pylist(), queries["text"].to_pylist(), strict=True):
        text_role.setdefault(text, set()).add(roles[qid])
    generated = PartitionedTable(RunPaths(cfg.root).generated(cfg.generator.name)).read()
    for text in set(generated["text"].to_pylist()):
        assert GENERATION in text_role[text]


def test_strategy_costs_compose_the_measured_rates():
    rates = {
        "passage": {"seconds_per_unit": 0.1},
        "query": {"seconds_per_unit": 0.01},
        "expanded": {"seconds_per_unit": 0.4},
    }
    costs = strategy_costs(2.0, rates, 35, target=1000)
    assert costs["dense"]["seconds_per_1k"] == pytest.approx(100)
    assert costs["xqg"]["seconds_per_1k"] == pytest.approx(1000 * (2.0 + 0.1 + 0.35))
    assert costs["expand"]["x_dense"] == pytest.approx(24.0)
    assert costs["multivector"]["dominant"] == "generate"
    assert costs["xqg"]["seconds_at_target"] == pytest.approx(2450)


def test_generated_query_length_counts_eos():
    # XLM-R pieces: "▁Wie ▁heißt ▁die ▁Stadt ?" (5) and "▁a" (1); mT5 writes EOS after them
    assert mt5_lengths(["Wie heißt die Stadt?", "a"]) == [6, 2]
    assert mean_output_tokens(["Wie heißt die Stadt?", "a"]) == 4


def test_paper_shape_passages_are_100_word_windows_of_the_run_passages():
    titles, texts = word_windows(["A", "B"], [" ".join(["x"] * 150), " ".join(["y"] * 120)])
    assert [len(text.split()) for text in texts] == [100, 100, 70]
    assert titles == ["A", "A", "B"]  # a window is titled by the passage it starts in
    assert texts[1] == " ".join(["x"] * 50 + ["y"] * 50)


def test_the_builds_translator_reload_is_accounted_apart():
    shape = {"translator_load_seconds": 6.4, "languages": 10, "seconds_per_passage": 2.0}
    reload = translator_reload(shape, passages_per_part=256)
    assert reload["seconds_per_passage"] == pytest.approx(6.4 * 10 / 256)
    assert reload["share_of_generation"] == pytest.approx(0.125)
    assert translator_reload({**shape, "translator_load_seconds": None}, 256) is None


def test_cost_probe_runs_with_the_tiny_mt5(run, tmp_path, monkeypatch):
    monkeypatch.setenv("XQG_RAY_CACHE", str(tmp_path / "cache"))
    cost = measure_indexing_cost(run["cfg"], "test machine")
    generation = cost["generation"]
    assert generation["engine"] and "random weights" in generation["model"]
    own, paper = generation["run"], generation["paper"]
    for shape in (own, paper):
        assert shape["seconds_per_passage"] > 0 and shape["passage_languages_timed"] >= 2
        assert shape["output_tokens"] >= 2 and shape["load_seconds"] > 0
        assert 1 <= shape["input_tokens"] <= 256
    assert own["languages"] == 1 and own["queries_per_language"] == 3
    assert paper["languages"] == 7 and paper["queries_per_language"] == 5
    assert paper["passage_words"] <= 100 < own["passage_words"]  # XQuAD paragraphs are longer
    reload = generation["translator_reload"]
    if generation["engine"].startswith("ctranslate2"):
        assert reload["seconds_per_load"] == own["translator_load_seconds"] > 0
    assert cost["queries_per_passage"] == 3 and cost["paper_queries_per_passage"] == 35
    rows = cost["strategies"][run["cfg"].encoder.name]
    assert rows["dense"]["x_dense"] == 1.0
    assert all(rows[s]["x_dense"] > 1.0 for s in ("xqg", "expand", "multivector"))
    paper_xqg = rows["xqg"]["paper_shape"]
    assert paper_xqg["components_s_per_passage"]["generate"] == paper["seconds_per_passage"]
    assert paper_xqg["seconds_at_target"] == pytest.approx(
        cost["target_passages"] * paper_xqg["seconds_per_1k"] / 1000
    )


def test_caveats_name_the_standin_bound_and_the_official_generators_languages():
    evaluation = {
        "config": {"generator": {"backend": "question_split", "model": OFFICIAL_GENERATOR}},
        "strategies": {"dense": {"per_lang": dict.fromkeys(["ar", "de", "en", "ru", "zh"], {})}},
    }
    standin, official = generator_caveats(evaluation)
    assert "upper bound for a perfect generator" in standin
    assert "(ar bn fi ja ko ru te)" in official and "only ar, ru are among them" in official
    evaluation["config"]["generator"] = {"backend": "hf", "model": "my/mt5"}
    assert generator_caveats(evaluation) == []


def test_xquad_r_section_sets_the_run_beside_lareqa_and_only_for_xquad_r():
    effect = {"value": 0.61, "delta": 0.02, "p": 0.01, "ci": [0.01, 0.03], "n": 400}
    rows = {
        "dense": {"effect": {"mAP@20": {**effect, "value": 0.59, "p": None, "n": None}}},
        "xqg (published)": {"effect": {"mAP@20": effect}},
        "expand": {"effect": None},  # not evaluated: no row, never a made-up cell
    }
    evaluation = {
        "config": {"dataset": {"name": "xquad_r"}, "generator": {"languages": ["de", "en"]}},
        "measures": ["mAP@20", "R@1"],
        "judged_queries": 800,
        "passages": 2400,
        "encoder": "multilingual-e5-small",
    }
    text = "\n".join(xquad_r_section(rows, evaluation))
    assert "| this run: `dense` | multilingual-e5-small | 0.590 | test split (400 question" in text
    assert (
        "| this run: `xqg (published)` | multilingual-e5-small | 0.610 (+0.020 [+0.010, +0.030]"
        in text
    )
    assert "`expand`" not in text.split("Source of")[0]
    published = [line for line in text.splitlines() if line.startswith("| LAReQA: mBERT")]
    assert [line.split(" | ")[2] for line in published] == [
        f"{row.value:.2f} (published mAP)" for row in LAREQA_MBERT
    ]
    assert "2,400 answer sentences in 2 languages" in text and "at most the full mAP" in text
    evaluation["config"]["dataset"]["name"] = "xquad"
    assert xquad_r_section(rows, evaluation) == []


def test_latency_probe_and_report(run, tmp_path, monkeypatch):
    monkeypatch.setenv("XQG_RAY_CACHE", str(tmp_path / "cache"))
    cfg = run["cfg"]
    out = Path(RunPaths(cfg.root).results(EXPERIMENT))
    (out / "cost.json").write_text(json.dumps(measure_indexing_cost(cfg, "test machine")))
    texts, vectors = study.reported_queries(cfg)
    latency = measure_query_cost(cfg, "test machine", texts, vectors)
    search = latency["search"]
    assert search["multivector"]["entries"] > search["dense"]["entries"] == 12
    assert all(row["single"]["p50_ms"] > 0 and row["qps_batch32"] > 0 for row in search.values())
    assert latency["encoder"]["single"]["requests"] == 10
    (out / "latency.json").write_text(json.dumps(latency))
    report = write_report(cfg.root, EXPERIMENT)
    answer = opening(report)
    lines = [line for line in answer.splitlines() if line.startswith("- **`")]
    assert [line.split("`")[1] for line in lines] == ["xqg", "xqg", "expand", "multivector"]
    assert "published setting (sum, alpha 0.01)" in lines[0]
    chosen = run["tuning"]["chosen"]
    assert f"dev-chosen setting ({chosen['reduce']}, alpha {chosen['alpha']:g}" in lines[1]
    for line in lines:
        assert "x dense" in line and "noise band" in line and "p=" in line
        assert "extrapolated from the rates timed on this machine" in line
    assert "not measured" not in answer
    # a question's only cross-lingual translation here is de: a group is one query
    assert "unit: query, n = " in answer and "95% CI" in answer
    assert "upper bound for a perfect generator" in answer
    text = Path(report).read_text(encoding="utf-8")
    assert "nothing is estimated" not in text
    assert "The columns marked * are extrapolated from" in text
    assert "which the rates above leave out" in text or "engine `hf" in text
    assert "![effectiveness against indexing cost](tradeoff.png)" in text
    assert (out / "tradeoff.png").read_bytes().startswith(PNG_MAGIC)
