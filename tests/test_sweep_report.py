"""Sweeps and the report on a tiny built and evaluated run (no Ray: the in-process paths)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml
from helpers import tiny_run_config

from xqg_ray.bench.sweep import load_sweep_config, run_sweeps
from xqg_ray.errors import ConfigError
from xqg_ray.evaluate.driver import evaluate_settings
from xqg_ray.report.render import write_report
from xqg_ray.stages.pipeline import build

EXPERIMENT = "sweep-test"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_models, shared_data):
    """A tiny run of all four strategies, built and evaluated, and a sweep over it."""
    folder = tmp_path_factory.mktemp("sweep")
    cfg = tiny_run_config(
        str(folder / "run"),
        tiny_models,
        shared_data,
        ray={"enabled": False},
        evaluate={"experiment": EXPERIMENT, "measures": ["R@1", "R@10"]},
    )
    build(cfg)
    evaluate_settings(cfg)
    run_yaml = folder / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())), encoding="utf-8")
    sweep_yaml = folder / "sweep.yaml"
    sweep_yaml.write_text(
        yaml.safe_dump(
            {
                "run": {"config": str(run_yaml)},
                "ray": False,
                "passages": 8,
                "xquad_dir": str(shared_data / "xquad"),
                "models": tiny_models,
                "base": {"passages_per_part": 4, "languages": ["de", "ar"]},
                "sweeps": {
                    "generation": {
                        "batch_size": [2, 4],
                        "actors": [1],
                        "queries_per_language": [1],
                        "languages": [1],
                    },
                    "encoding": {"max_length": [32], "batch_size": [4]},
                    "index": {},
                    "search": {"service": False, "shards": [1, 2], "requests": 20},
                },
            }
        ),
        encoding="utf-8",
    )
    sweep = load_sweep_config(str(sweep_yaml), ["base.max_new_tokens=4"])
    results = run_sweeps(sweep, log=lambda _: None)
    report = Path(write_report(cfg.root, EXPERIMENT))
    return {"cfg": cfg, "root": Path(cfg.root), "results": results, "report": report}


def read_rows(folder: Path, name: str) -> tuple[list[dict], list[dict]]:
    data = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    with open(folder / f"{name}.csv", encoding="utf-8") as handle:
        return data["rows"], list(csv.DictReader(handle))


def test_sweep_rows_are_written_as_json_and_csv(run):
    folder = run["root"] / "results" / EXPERIMENT / "sweep"
    for name in ("generation", "encoding", "index", "search"):
        rows, csv_rows = read_rows(folder, name)
        assert rows == run["results"][name]
        assert len(csv_rows) == len(rows) > 0
        for row, flat in zip(rows, csv_rows, strict=True):
            assert {k: "" if v is None else str(v) for k, v in row.items()} == flat
    assert not (folder / "scaling.json").exists()  # not configured, not run


def test_generation_and_encoding_rates(run):
    generation = run["results"]["generation"]
    # one axis at a time: batch size 2 and 4, then the base point again for each other axis
    assert [(r["axis"], r["value"]) for r in generation] == [
        ("batch_size", 2),
        ("batch_size", 4),
        ("actors", 1),
        ("queries_per_language", 1),
        ("languages", 1),
    ]
    for row in generation:
        assert row["passages"] == 8
        assert row["generated_queries"] == 8 * 1 * 1  # passages x queries x languages
        assert row["generated_tokens"] > 0
        assert row["passages_per_second"] == pytest.approx(8 / row["seconds"])
        assert row["tokens_per_second"] == pytest.approx(row["generated_tokens"] / row["seconds"])
        assert row["backend"] == "local"
    (encoding,) = run["results"]["encoding"]
    assert (encoding["max_length"], encoding["batch_size"], encoding["passages"]) == (32, 4, 8)
    assert encoding["passages_per_second"] == pytest.approx(8 / encoding["seconds"])


def test_index_and_search_rows_match_the_build(run):
    index_stats = json.loads((run["root"] / "stats" / "index.json").read_text(encoding="utf-8"))
    assert {
        r["strategy"]: {k: v for k, v in r.items() if k != "strategy"}
        for r in run["results"]["index"]
    } == index_stats
    search = run["results"]["search"]
    assert {(r["strategy"], r["shards"]) for r in search} == {
        (s, n) for s in index_stats for n in (1, 2)
    }
    for row in search:
        assert row["mode"] == "in-process" and row["requests"] == 20
        assert row["entries"] == index_stats[row["strategy"]]["entries"]  # resharding keeps all
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["qps"] > 0
    multivector = index_stats["multivector"]["entries"]
    assert multivector > index_stats["dense"]["entries"] == index_stats["xqg"]["entries"]


def expected_summary(root: Path) -> dict[str, dict]:
    """The summary's figures computed here from the stats and evaluation files."""
    stats = {
        p.stem: json.loads(p.read_text(encoding="utf-8")) for p in (root / "stats").glob("*.json")
    }
    evaluation = json.loads(
        (root / "results" / EXPERIMENT / "evaluation.json").read_text(encoding="utf-8")
    )
    passages = stats["encode-passages"]["rows_in"]

    def per_1k(*stages):
        return 1000 * sum(stats[s]["seconds"] for s in stages) / passages

    # xqg is mixed inside the encoder actors, so its time is encode-generated's: written out here
    # by hand, not by the report's rule for fused stages
    assert stats["augment-xqg"]["fused_into"] == "encode-generated"
    assert not stats["augment-multivector"].get("fused_into")
    encoding = {
        "dense": per_1k("encode-passages"),
        "xqg": per_1k("encode-passages", "encode-generated"),
        "expand": per_1k("augment-expand"),
        "multivector": per_1k("encode-passages", "encode-generated", "augment-multivector"),
    }
    # the headline is the cross-lingual macro (de -> en here; en -> en is monolingual)
    dense = evaluation["strategies"]["dense"]["macro_cross_lingual"]
    out = {}
    for strategy, enc in encoding.items():
        summary = evaluation["strategies"][strategy]
        tests = summary.get("ttest_vs_dense", {}).get("cross_lingual", {})
        out[strategy] = {
            "generation": 0.0 if strategy == "dense" else per_1k("generate"),
            "encoding": enc,
            "index": stats["index"][strategy],
            "effect": {
                m: (
                    summary["macro_cross_lingual"][m],
                    summary["macro_cross_lingual"][m] - dense[m],
                    tests.get(m, {}).get("p"),
                )
                for m in ("R@1", "R@10")
            },
        }
    return out


def table_rows(markdown: str) -> dict[str, list[str]]:
    section = markdown.split("## This run's own build", 1)[1].split("\n\n", 3)[2]
    rows = {}
    for line in section.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_summary_table_equals_the_measured_files(run):
    expected = expected_summary(run["root"])
    summary = json.loads((run["report"].parent / "report.json").read_text(encoding="utf-8"))
    table = table_rows(run["report"].read_text(encoding="utf-8"))
    assert set(table) == set(expected) == set(summary["summary"])
    for strategy, want in expected.items():
        got = summary["summary"][strategy]
        assert got["generation_s_per_1k"] == pytest.approx(want["generation"])
        assert got["encoding_s_per_1k"] == pytest.approx(want["encoding"])
        assert got["index_entries"] == want["index"]["entries"]
        assert got["index_bytes"] == want["index"]["bytes"]
        cells = table[strategy]
        assert cells[0] == f"{want['generation']:.3f}"
        assert cells[1] == f"{want['encoding']:.3f}"
        assert cells[2] == f"{want['index']['seconds']:.3f}"
        assert cells[3:5] == [str(want["index"]["entries"]), str(want["index"]["bytes"])]
        for cell, (value, delta, p) in zip(cells[5:], want["effect"].values(), strict=True):
            assert cell.startswith(f"{value:.3f}")
            if p is not None:
                assert f"({delta:+.3f}, p={p:.3g})" in cell


def test_report_plots_are_png_and_missing_sweeps_say_not_measured(run):
    text = run["report"].read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert {"effectiveness.png", "generation.png", "encoding.png", "search.png"} <= set(images)
    for name in images:
        assert (run["report"].parent / name).read_bytes().startswith(PNG_MAGIC), name
    scaling = text.split("### scaling", 1)[1]
    assert scaling.strip().startswith("not measured")
    answer = text.split("## Answer", 1)[1].split("##", 1)[0]
    for strategy in ("xqg", "expand", "multivector"):
        line = next(x for x in answer.splitlines() if x.startswith(f"- **`{strategy}`**"))
        # no cost or latency probe ran here: the answer says so instead of making figures up
        assert "indexing cost not measured" in line and "query latency not measured" in line
        assert "vs dense, 95% CI [" in line and "paired t-test p=" in line


def test_a_bad_sweep_key_is_a_config_error_naming_it(tmp_path):
    bad = tmp_path / "sweep.yaml"
    bad.write_text("run: {config: x.yaml}\nsweeps: {generation: {batch_sizes: [1]}}\n")
    with pytest.raises(ConfigError, match="batch_sizes"):
        load_sweep_config(str(bad))


@pytest.mark.parametrize("name", ["sweep-demo.yaml", "sweep-gpu.yaml"])
def test_shipped_sweep_configs_name_a_valid_run_and_valid_overrides(name):
    from xqg_ray.config import RunConfig, load_config, parse_override, set_path

    repo = Path(__file__).resolve().parents[1]
    sweep = load_sweep_config(str(repo / "jobs" / "configs" / name))
    run = load_config(str(repo / sweep.run.config), sweep.run.set)
    assert run.evaluate.experiment
    data = RunConfig().model_dump()
    for item in sweep.overrides:
        set_path(data, *parse_override(item))
    RunConfig.model_validate(data)  # every override names a real run-config field
    generation = sweep.sweeps.generation
    assert max(generation.languages) <= len(sweep.base.languages)
