"""The frontier and the sensitivity: nested draws, exact re-mixing, degradations that never
touch evaluated questions (tiny built run, no Ray; figures test code paths, not quality)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from helpers import tiny_run_config

from xqg_ray.datasets.splits import GENERATION
from xqg_ray.evaluate import frontier, sensitivity
from xqg_ray.evaluate.remix import Part, read_part
from xqg_ray.models.question_split import QuestionSplitGenerator
from xqg_ray.paths import RunPaths
from xqg_ray.stages.augment import mix_from_sums, passage_sums, sums_name
from xqg_ray.stages.pipeline import build
from xqg_ray.stages.roles import run_roles
from xqg_ray.storage import PartitionedTable, read_table

COST = {
    "generation": {"run": {"seconds_per_passage_language": 1.0, "queries_per_language": 4}},
    "encoders": {
        "any": {"passage": {"seconds_per_unit": 0.1}, "query": {"seconds_per_unit": 0.01}}
    },
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_models, shared_data):
    folder = tmp_path_factory.mktemp("frontier")
    cfg = tiny_run_config(
        str(folder / "run"),
        tiny_models,
        shared_data,
        ray={"enabled": False},
        generator={"backend": "question_split", "languages": ["de"], "queries_per_language": 4},
        augment={"strategies": ["dense", "xqg", "multivector"], "queries_per_language": 2},
        tuning={"dev_fraction": 0.3, "alphas": [0.01, 0.3], "reduces": ["sum", "mean"]},
        evaluate={"experiment": "frontier", "measures": ["R@1", "RR@10"]},
    )
    build(cfg)
    return cfg


def test_stand_in_draws_are_nested():
    queries = pa.table(
        {"qid": [f"q{i}" for i in range(4)], "lang": ["de"] * 4, "text": list("abcd")}
    )
    qrels = pa.table({"qid": [f"q{i}" for i in range(4)], "pid": ["p"] * 4, "relevance": [1] * 4})
    roles = dict.fromkeys(queries["qid"].to_pylist(), GENERATION)

    def draws(n: int) -> list[str]:
        return QuestionSplitGenerator(queries, qrels, roles, n, seed=3).generate_for(["p"], "de")[0]

    ten = draws(10)
    assert len(set(ten)) > 1
    for n in (1, 2, 3, 5):
        assert draws(n) == ten[:n]


def _part(passages: int = 6, per_passage: int = 4) -> Part:
    rows = passages * per_passage
    return Part(
        pids=np.array([f"p{i}" for i in range(passages)], dtype=object),
        langs=np.array(["en"] * passages, dtype=object),
        vectors=np.zeros((passages, 2), np.float32),
        name="part-00000",
        row_passage=np.repeat(np.arange(passages), per_passage),
        row_lang=np.array(["de", "ar"] * (rows // 2), dtype=object),
        row_k=np.tile(np.arange(per_passage) // 2, passages),
        row_text=np.array([f"t{i}" for i in range(rows)], dtype=object),
        bank=np.zeros((rows, 2), np.float32),
    )


def test_off_topic_replacement_never_draws_from_the_passages_paragraph():
    part = _part()
    paragraph = {"p0": "a", "p1": "a", "p2": "b", "p3": "b", "p4": "c", "p5": "c"}
    rows = np.arange(len(part.row_k))
    donors = sensitivity.offtopic_donors(part, rows, paragraph, seed=0)
    para = np.array([paragraph[p] for p in part.pids])
    assert (para[part.row_passage[donors]] != para[part.row_passage[rows]]).all()
    assert (part.row_lang[donors] == part.row_lang[rows]).all()


def test_replaced_rows_grow_with_q():
    part = _part()
    rows = np.arange(len(part.row_k))
    sets = [set(sensitivity.replaced(part, rows, q, 0)) for q in sensitivity.FRACTIONS]
    assert [len(s) for s in sets] == [0, 6, 12, 18, 24]
    assert all(a <= b for a, b in zip(sets, sets[1:], strict=False))


def test_frontier_remix_equals_the_build_at_its_n(run):
    """n = 2 of the 4 stored draws, every language: the build's sums and xqg entries."""
    paths = RunPaths(run.root)
    enc = run.encoder.name
    planner = frontier.GridPlanner(((2, 1),), ("de",), run.split.seed)
    for name in PartitionedTable(paths.collection).manifest()["parts"]:
        part = read_part(run, name)
        mix = planner(run, part)[0]
        chosen = np.isin(mix.lang, mix.languages["de"])
        sums = np.zeros(part.vectors.shape, np.float64)
        np.add.at(sums, mix.passage[chosen], part.bank[mix.vector[chosen]].astype(np.float64))
        counts = np.bincount(mix.passage[chosen], minlength=len(part.pids))
        passages = PartitionedTable(paths.embeddings(enc, "passages")).read_part(name)
        stored = PartitionedTable(paths.embeddings(enc, sums_name(run))).read_part(name)
        built_sums, built_counts = passage_sums(passages, stored, None)
        assert (counts == built_counts).all() and counts.max() == 2
        np.testing.assert_allclose(sums, built_sums, atol=1e-5)
        mixed = mix_from_sums(part.vectors, sums, counts, run.augment.alpha, run.augment.reduce)
        built = PartitionedTable(paths.embeddings(enc, "xqg")).read_part(name)
        np.testing.assert_allclose(
            mixed, np.stack(built["vector"].to_numpy(zero_copy_only=False)), atol=1e-6
        )


def test_no_dev_or_test_question_is_a_stand_in_query_at_any_q(run):
    roles = run_roles(run)
    queries = read_table(RunPaths(run.root).corpus("queries"))
    roles_of_text: dict[str, set[str]] = {}
    for qid, text in zip(queries["qid"].to_pylist(), queries["text"].to_pylist(), strict=True):
        roles_of_text.setdefault(text, set()).add(roles[qid])
    planner = sensitivity.DegradePlanner(
        (),
        2,
        ("de",),
        sensitivity.paragraphs(run),
        sensitivity.translations(run),
        run.split.seed,
    )
    for name in PartitionedTable(RunPaths(run.root).collection).manifest()["parts"]:
        part = read_part(run, name)
        for kind in sensitivity.KINDS:
            for q in sensitivity.FRACTIONS:
                texts = planner.texts(part, kind, q)
                assert texts and all(GENERATION in roles_of_text[t] for t in texts)


def test_frontier_and_sensitivity_end_to_end(run):
    grid = frontier.run_frontier(run, COST)
    assert {(p["n"], p["languages"]) for p in grid["points"]} == {(n, 1) for n in (1, 2, 3)}
    assert grid["cheapest_within_best"]["cost_s_per_1k"] <= grid["best"]["cost_s_per_1k"]
    assert grid["points"][0]["cost_s_per_1k"] == pytest.approx(1000 * (0.1 + 0.25 + 0.01))
    assert frontier.plot_png(grid).startswith(b"\x89PNG")
    degraded = sensitivity.run_sensitivity(run)
    rows = degraded["kinds"]["off-topic"]["rows"]
    assert [r["q"] for r in rows] == list(sensitivity.FRACTIONS)
    assert degraded["kinds"]["wrong-language"]["rows"][0]["xqg"] == rows[0]["xqg"]  # q = 0
    assert len(sensitivity.table(degraded)) == 8
    assert sensitivity.plot_png(degraded).startswith(b"\x89PNG")
