"""Paired tests over question groups, the bootstrap CI and Holm's correction (pure, no run)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from xqg_ray.evaluate.paired import GROUP, QUERY, bootstrap_ci, holm, paired_test, unit_text
from xqg_ray.evaluate.scoring import significance

LANGS = ["ar", "de", "el", "es", "hi", "ru", "th", "tr", "vi", "zh"]


def translated(group_a: list[float], group_b: list[float]):
    """Every question in every language with the same score: translations that are copies."""
    a, b, groups, langs = {}, {}, {}, {}
    for g, (x, y) in enumerate(zip(group_a, group_b, strict=True)):
        for lang in LANGS:
            qid = f"{lang}-q{g}"
            a[qid], b[qid], groups[qid], langs[qid] = x, y, f"q{g}", lang
    return a, b, groups, langs


# 12 questions: a helps on 6, hurts on 3, ties on 3 (hand-made, not random)
GROUP_A = [1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 1]
GROUP_B = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 1]


def test_copies_of_a_question_are_one_unit_not_ten():
    a, b, groups, _ = translated(GROUP_A, GROUP_B)
    pooled = paired_test(a, b)
    grouped = paired_test(a, b, groups)
    assert pooled["unit"] == QUERY and pooled["n"] == 120
    assert grouped["unit"] == GROUP and grouped["n"] == 12 and grouped["queries_per_unit"] == 10
    # the same mean difference, but ten copies of each question look like ten samples
    assert pooled["delta"] == pytest.approx(grouped["delta"]) == pytest.approx(3 / 12)
    assert pooled["p"] < 0.01 < 0.3 < grouped["p"]
    expected = stats.ttest_rel(GROUP_A, GROUP_B)
    assert grouped["p"] == pytest.approx(expected.pvalue)
    assert grouped["t"] == pytest.approx(expected.statistic)
    assert grouped["ci"][0] < 0 < grouped["ci"][1] and pooled["ci"][0] > 0


def test_a_group_is_valued_by_the_mean_of_its_queries():
    a = {"x1": 1.0, "x2": 0.0, "y1": 1.0, "y2": 1.0, "z1": 0.0, "z2": 0.0}
    b = {"x1": 0.0, "x2": 0.0, "y1": 0.0, "y2": 1.0, "z1": 1.0, "z2": 0.0, "only-b": 1.0}
    groups = {q: q[0] for q in a}
    test = paired_test(a, b, groups)
    # unit means: x 0.5 vs 0, y 1 vs 0.5, z 0 vs 0.5 (only-b is not shared)
    expected = stats.ttest_rel([0.5, 1.0, 0.0], [0.0, 0.5, 0.5])
    assert test["n"] == 3 and test["p"] == pytest.approx(expected.pvalue)
    assert test["delta"] == pytest.approx(1 / 6)


def test_without_groups_each_query_is_its_own_unit():
    rng = np.random.default_rng(3)
    x, y = rng.random(40), rng.random(40)
    a = {f"q{i}": v for i, v in enumerate(x)}
    b = {f"q{i}": v for i, v in enumerate(y)}
    alone = {q: q for q in a}  # a group column whose every value is unique
    for test in (paired_test(a, b), paired_test(a, b, alone), paired_test(a, b, {})):
        assert test["unit"] == QUERY and test["n"] == 40 and test["queries_per_unit"] == 1
        assert test["p"] == pytest.approx(stats.ttest_rel(x, y).pvalue)
    assert unit_text(paired_test(a, b)) == "query, n = 40 queries"


def test_bootstrap_ci_covers_the_true_delta_and_is_seeded():
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(40):
        differences = rng.normal(0.1, 0.3, size=200)
        low, high = bootstrap_ci(differences, resamples=2000)
        assert low < differences.mean() < high
        covered += low <= 0.1 <= high
    assert covered >= 34  # a 95% interval: 38 expected of 40
    differences = rng.normal(0.1, 0.3, size=200)
    assert bootstrap_ci(differences) == bootstrap_ci(differences)  # seeded: the same interval
    assert bootstrap_ci(differences, seed=1) != bootstrap_ci(differences, seed=0)
    assert bootstrap_ci(np.full(5, 0.25)) == (0.25, 0.25)  # no spread, no warning


def test_holm_on_hand_computed_values():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([0.2]) == [0.2]
    assert holm([]) == []


def test_significance_pools_by_group_and_corrects_languages_by_holm():
    a, b, groups, langs = translated(GROUP_A, GROUP_B)
    for qid in list(a):  # an English copy of every question: the monolingual language
        if qid.startswith("ar-"):
            en = "en-" + qid[3:]
            a[en], b[en], groups[en], langs[en] = 1.0, 1.0, groups[qid], "en"
    scores = {q: {"R@1": v} for q, v in a.items()}
    baseline = {q: {"R@1": v} for q, v in b.items()}
    out = significance(scores, baseline, langs, ["R@1"], frozenset({"en"}), groups)
    cross = out["cross_lingual"]["R@1"]
    assert cross["unit"] == GROUP and cross["n"] == 12 and cross["queries_per_unit"] == 10
    assert cross["p"] == pytest.approx(stats.ttest_rel(GROUP_A, GROUP_B).pvalue)
    assert out["all"]["R@1"]["queries_per_unit"] == 11
    assert "(the mean over its 10 cross-lingual translations), n = 12 groups" in unit_text(
        cross, "cross-lingual"
    )
    tested = [lang for lang in sorted(set(langs.values())) if lang in out]
    assert tested == sorted([*LANGS, "en"])
    raw = [out[lang]["R@1"]["p"] for lang in tested]
    assert [out[lang]["R@1"]["p_holm"] for lang in tested] == pytest.approx(holm(raw))
    for lang in tested:
        assert out[lang]["R@1"]["unit"] == QUERY and out[lang]["R@1"]["n"] == 12
    assert "p_holm" not in cross
