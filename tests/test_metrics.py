"""Metrics on small cases computed by hand (arithmetic in the comments)."""

from __future__ import annotations

import math
import re

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from xqg_ray.errors import ConfigError, InputError
from xqg_ray.evaluate.metrics import (
    aggregate,
    evaluate_run,
    map_at_k_xtreme,
    paired_ttest,
    recall_at_kt,
    xor_retrieve_recall,
    xor_word_tokenize,
)
from xqg_ray.schema import QRELS


def qrels_table(rows: list[tuple[str, str, int]]) -> pa.Table:
    qids, pids, relevance = zip(*rows, strict=True)
    return pa.table({"qid": qids, "pid": pids, "relevance": relevance}, schema=QRELS)


# q1: relevant {a}; q2: relevant {b, c}; q3: relevant {d}; q4: only a non-relevant judgement
# (excluded); q5: relevant {e} but absent from the run (scores 0); q6: in the run only (ignored).
QRELS_HAND = qrels_table(
    [("q1", "a", 1), ("q2", "b", 1), ("q2", "c", 2), ("q3", "d", 1), ("q4", "d", 0), ("q5", "e", 1)]
)
# (qid, pid, score, rank). q2's scores contradict its ranks on purpose: ranks decide the order.
RUN_HAND = [
    ("q1", "x", 3.0, 1),
    ("q1", "a", 2.0, 2),
    ("q1", "y", 1.0, 3),
    ("q2", "b", 0.1, 1),
    ("q2", "z", 0.5, 2),
    ("q2", "c", 0.9, 3),
    ("q3", "u", 1.0, 1),
    ("q4", "d", 1.0, 1),
    ("q6", "a", 1.0, 1),
]
MEASURES = ["R@1", "R@10", "RR@10", "nDCG@10", "AP@20", "mAP@20"]


def test_evaluate_run_matches_hand_computed_values():
    result = evaluate_run(RUN_HAND, QRELS_HAND, MEASURES)

    assert set(result) == {"q1", "q2", "q3", "q5"}
    # q1: ranking x, a*, y; one relevant at rank 2.
    #   R@1 = 0/1, R@10 = 1/1, RR@10 = 1/2, nDCG@10 = (1/log2(3)) / 1 = 0.630930,
    #   AP = P@2 / R = (1/2) / 1 = 0.5, mAP@20 = (1/2) / min(1, 20) = 0.5
    assert result["q1"] == pytest.approx(
        {
            "R@1": 0.0,
            "R@10": 1.0,
            "RR@10": 0.5,
            "nDCG@10": 1 / math.log2(3),
            "AP@20": 0.5,
            "mAP@20": 0.5,
        }  # fmt: skip
    )
    # q2: ranking b*, z, c** (nDCG uses graded gains: b has relevance 1, c relevance 2, so
    # DCG = 1/log2(2) + 2/log2(4) = 2.0 and IDCG = 2/log2(2) + 1/log2(3) = 2.630930).
    #   R@1 = 1/2, R@10 = 2/2, RR@10 = 1/1, nDCG@10 = 2.0 / 2.630930 = 0.760187,
    #   AP = (P@1 + P@3) / 2 = (1 + 2/3) / 2 = 0.833333, mAP@20 = (1 + 2/3) / min(2, 20)
    assert result["q2"] == pytest.approx(
        {
            "R@1": 0.5,
            "R@10": 1.0,
            "RR@10": 1.0,
            "nDCG@10": 2.0 / (2.0 + 1 / math.log2(3)),
            "AP@20": 5 / 6,
            "mAP@20": 5 / 6,
        }  # fmt: skip
    )
    # q3: its relevant passage is not retrieved; q5: no run rows at all. Both score 0.
    assert result["q3"] == dict.fromkeys(MEASURES, 0.0)
    assert result["q5"] == dict.fromkeys(MEASURES, 0.0)


def test_evaluate_run_orders_by_score_when_the_table_has_no_rank():
    # Same q2 rows without ranks: score order is c* (0.9), z (0.5), b* (0.1).
    # R@1 = 1/2, RR@10 = 1, AP = (P@1 + P@3) / 2 = (1 + 2/3) / 2; q1 by score: x, a*, y as before.
    # Ties: q7 has two passages at score 1.0, broken by pid ascending: "m" before "n*",
    # so RR@10 = 1/2 (score alone cannot order them; pid keeps the result deterministic).
    rows = [r for r in RUN_HAND if r[0] in ("q1", "q2")] + [
        ("q7", "n", 1.0, 0),
        ("q7", "m", 1.0, 0),
    ]
    table = pa.table(
        {"qid": [r[0] for r in rows], "pid": [r[1] for r in rows], "score": [r[2] for r in rows]}
    )
    qrels = qrels_table([("q1", "a", 1), ("q2", "b", 1), ("q2", "c", 1), ("q7", "n", 1)])

    result = evaluate_run(table, qrels, ["R@1", "RR@10", "AP@20"])

    assert result["q2"] == pytest.approx({"R@1": 0.5, "RR@10": 1.0, "AP@20": 5 / 6})
    assert result["q1"] == pytest.approx({"R@1": 0.0, "RR@10": 0.5, "AP@20": 0.5})
    assert result["q7"] == pytest.approx({"R@1": 0.0, "RR@10": 0.5, "AP@20": 0.5})


def test_evaluate_run_of_an_empty_run_scores_every_judged_query_zero():
    assert evaluate_run([], QRELS_HAND, ["R@10", "mAP@20"]) == {
        qid: {"R@10": 0.0, "mAP@20": 0.0} for qid in ("q1", "q2", "q3", "q5")
    }


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("q1", "a", 1.0, 1), ("q1", "a", 0.5, 2)], "passage 'a' appears more than once"),
        ([("q1", "a", 1.0, 1), ("q1", "b", 0.5, 1)], "rank 1 appears more than once"),
        ([("q1", "a", 1.0)], "expected (qid, pid, score, rank)"),
    ],
)
def test_evaluate_run_rejects_ambiguous_runs(rows, message):
    with pytest.raises(InputError, match=re.escape(message)):
        evaluate_run(rows, QRELS_HAND, ["R@1"])


def test_evaluate_run_rejects_missing_columns_and_unknown_measures():
    with pytest.raises(InputError, match="missing column 'qid'"):
        evaluate_run(pa.table({"pid": ["a"], "rank": [1]}), QRELS_HAND, ["R@1"])
    with pytest.raises(InputError, match="missing column 'relevance'"):
        evaluate_run(RUN_HAND, QRELS_HAND.drop_columns(["relevance"]), ["R@1"])
    with pytest.raises(ConfigError, match="unknown measure 'Recall-ish'"):
        evaluate_run(RUN_HAND, QRELS_HAND, ["Recall-ish"])


def test_map_at_k_xtreme_divides_by_min_of_relevant_and_k():
    qrels = qrels_table(
        [("q1", p, 1) for p in "abcde"]
        + [("q2", "a", 1), ("q3", "a", 1), ("q3", "b", 1), ("q4", "z", 1)]
    )
    run = [
        # q1: R = 5 > k = 3. Top 3: a* (P@1 = 1), x, b* (P@3 = 2/3); c* at rank 4 is cut.
        #     (1 + 2/3) / min(5, 3) = 5/9.
        ("q1", "a", 0.0, 1), ("q1", "x", 0.0, 2), ("q1", "b", 0.0, 3), ("q1", "c", 0.0, 4),
        # q2: R = 1 < k. b is relevant to q1, not to q2. a* at rank 3: (1/3) / min(1, 3) = 1/3.
        ("q2", "b", 0.0, 1), ("q2", "y", 0.0, 2), ("q2", "a", 0.0, 3),
        # q3: R = 2. b*, a*: (1 + 2/2) / min(2, 3) = 1.
        ("q3", "b", 0.0, 1), ("q3", "a", 0.0, 2),
        # q4: judged, no run rows: 0.
    ]  # fmt: skip

    assert map_at_k_xtreme(run, qrels, k=3) == pytest.approx(
        {"q1": 5 / 9, "q2": 1 / 3, "q3": 1.0, "q4": 0.0}
    )


def test_map_at_20_reaches_one_with_more_relevant_passages_than_k():
    # 25 relevant passages, all 20 top ranks relevant: sum of P@i = 20 * 1 = 20.
    # XTREME-R: 20 / min(25, 20) = 1.0, whereas trec_eval's AP@20 is 20 / 25 = 0.8.
    # q2: R = 2 < 20, relevant at ranks 1 and 20: (1/1 + 2/20) / min(2, 20) = 0.55.
    qrels = qrels_table(
        [("q1", f"r{i}", 1) for i in range(25)] + [("q2", "r0", 1), ("q2", "r1", 1)]
    )
    ranked = [f"r{i}" for i in range(20)]
    q2_ranked = ["r0"] + [f"n{i}" for i in range(18)] + ["r1"]
    run = [("q1", pid, 0.0, rank) for rank, pid in enumerate(ranked, 1)] + [
        ("q2", pid, 0.0, rank) for rank, pid in enumerate(q2_ranked, 1)
    ]

    assert map_at_k_xtreme(run, qrels) == pytest.approx({"q1": 1.0, "q2": 0.55})
    result = evaluate_run(run, qrels, ["AP@20", "mAP@20"])
    assert result["q1"] == pytest.approx({"AP@20": 0.8, "mAP@20": 1.0})


def test_metrics_agree_with_direct_formulas_on_a_larger_random_run():
    rng = np.random.default_rng(7)
    queries, depth, corpus = 300, 30, 200
    rows, qrels_rows = [], []
    expected_r10, expected_rr10, expected_map5 = {}, {}, {}
    for q in range(queries):
        qid = f"q{q}"
        ranked = [f"p{p}" for p in rng.choice(corpus, size=depth, replace=False)]
        relevant = {
            f"p{p}" for p in rng.choice(corpus, size=int(rng.integers(1, 4)), replace=False)
        }
        rows += [(qid, pid, float(depth - i), i + 1) for i, pid in enumerate(ranked)]
        qrels_rows += [(qid, pid, 1) for pid in relevant]
        flags = [pid in relevant for pid in ranked]
        expected_r10[qid] = sum(flags[:10]) / len(relevant)
        first = next((i for i, hit in enumerate(flags[:10]) if hit), None)
        expected_rr10[qid] = 0.0 if first is None else 1 / (first + 1)
        precision_sum = sum(sum(flags[: i + 1]) / (i + 1) for i in range(5) if flags[i])
        expected_map5[qid] = precision_sum / min(len(relevant), 5)
    order = rng.permutation(len(rows))  # input order must not matter
    run = pa.table(
        {
            "qid": [rows[i][0] for i in order],
            "pid": [rows[i][1] for i in order],
            "score": [rows[i][2] for i in order],
            "rank": [rows[i][3] for i in order],
        }
    )

    result = evaluate_run(run, qrels_table(qrels_rows), ["R@10", "RR@10", "mAP@5"])

    assert {q: v["R@10"] for q, v in result.items()} == pytest.approx(expected_r10)
    assert {q: v["RR@10"] for q, v in result.items()} == pytest.approx(expected_rr10)
    assert {q: v["mAP@5"] for q, v in result.items()} == pytest.approx(expected_map5)


def test_aggregate_macro_weighs_languages_micro_weighs_queries():
    per_query = {
        "q1": {"R@10": 1.0, "RR@10": 1.0},
        "q2": {"R@10": 1.0, "RR@10": 0.5},
        "q3": {"R@10": 0.0, "RR@10": 0.0},
        "q4": {"R@10": 1.0, "RR@10": 0.25},
    }
    langs = {"q1": "bn", "q2": "bn", "q3": "bn", "q4": "ar", "q9": "te"}

    summary = aggregate(per_query, langs)

    # bn: R@10 (1 + 1 + 0)/3 = 2/3, RR@10 (1 + 0.5 + 0)/3 = 0.5; ar: R@10 1, RR@10 0.25.
    # macro: R@10 (2/3 + 1)/2 = 5/6, RR@10 (0.5 + 0.25)/2 = 0.375.
    # micro: R@10 3/4, RR@10 (1 + 0.5 + 0 + 0.25)/4 = 0.4375. te has no queries: not reported.
    assert summary["per_lang"]["ar"] == pytest.approx({"R@10": 1.0, "RR@10": 0.25})
    assert summary["per_lang"]["bn"] == pytest.approx({"R@10": 2 / 3, "RR@10": 0.5})
    assert list(summary["per_lang"]) == ["ar", "bn"]
    assert summary["queries"] == {"ar": 1, "bn": 3}
    assert summary["macro"] == pytest.approx({"R@10": 5 / 6, "RR@10": 0.375})
    assert summary["micro"] == pytest.approx({"R@10": 0.75, "RR@10": 0.4375})


def test_aggregate_rejects_unknown_languages_and_ragged_measures():
    with pytest.raises(InputError, match="'q2' has no language"):
        aggregate({"q1": {"R@1": 1.0}, "q2": {"R@1": 0.0}}, {"q1": "ar"})
    with pytest.raises(InputError, match="'q2' has measures"):
        aggregate({"q1": {"R@1": 1.0}, "q2": {"R@10": 0.0}}, {"q1": "ar", "q2": "ar"})
    with pytest.raises(InputError, match="no per-query results"):
        aggregate({}, {})


def test_xor_word_tokenize_splits_like_treebank_without_sentence_splitting():
    # Treebank splits clitics, brackets and commas; the final period is split, a sentence-
    # internal one stays attached ("1775."), because no Punkt sentence splitting runs first.
    assert xor_word_tokenize("Born in 1775. Died (aged 80), Smith's house.") == [
        "Born", "in", "1775.", "Died", "(", "aged", "80", ")", ",", "Smith", "'s", "house", ".",
    ]  # fmt: skip


def test_recall_at_kt_cuts_exactly_at_the_token_budget():
    ranked = {"q": ["alpha beta gamma", "delta epsilon"]}
    # Tokens in order: alpha beta gamma | delta epsilon.
    # Budget 3 ends exactly at the first passage's end: "alpha beta gamma".
    assert recall_at_kt(ranked, {"q": ["delta"]}, max_tokens=3) == {"q": 0.0}
    assert recall_at_kt(ranked, {"q": ["gamma"]}, max_tokens=3) == {"q": 1.0}
    # Budget 4: "alpha beta gamma delta": the next passage's first token is in, the second not;
    # an answer spanning the passage boundary matches the space-joined window.
    assert recall_at_kt(ranked, {"q": ["delta"]}, max_tokens=4) == {"q": 1.0}
    assert recall_at_kt(ranked, {"q": ["epsilon"]}, max_tokens=4) == {"q": 0.0}
    assert recall_at_kt(ranked, {"q": ["gamma delta"]}, max_tokens=4) == {"q": 1.0}
    assert recall_at_kt(ranked, {"q": ["epsilon"]}, max_tokens=5) == {"q": 1.0}


def test_recall_at_kt_matches_substrings_of_the_joined_tokens():
    ranked = {"q": ["Smith's house."]}  # window: "Smith 's house ."
    assert recall_at_kt(ranked, {"q": ["ouse"]}, max_tokens=10) == {"q": 1.0}  # substring
    assert recall_at_kt(ranked, {"q": ["Smith"]}, max_tokens=10) == {"q": 1.0}
    # The official script compares raw answers with re-joined tokens: "Smith's" misses.
    assert recall_at_kt(ranked, {"q": ["Smith's"]}, max_tokens=10) == {"q": 0.0}
    assert recall_at_kt(ranked, {"q": ["smith"]}, max_tokens=10) == {"q": 0.0}  # case-sensitive
    # Another tokenizer can be injected (e.g. nltk.word_tokenize where Punkt is installed).
    assert recall_at_kt(ranked, {"q": ["Smith's"]}, 10, tokenize=str.split) == {"q": 1.0}


def test_recall_at_kt_skips_yes_no_questions_and_counts_unranked_ones_as_misses():
    ranked = {
        "yes_only": ["yes yes"],
        "yes_no": ["no"],
        "mixed": ["yes , of course"],  # "yes" is not a span answer: this is a miss
        "hit": ["Paris is big"],
        "no_answers_given": ["Paris"],
    }
    answers = {
        "yes_only": ["yes"],
        "yes_no": ["no", "yes"],
        "mixed": ["yes", "Paris"],
        "hit": ["Paris"],
        "unranked": ["Paris"],
    }

    assert recall_at_kt(ranked, answers, max_tokens=100) == {
        "mixed": 0.0,
        "hit": 1.0,
        "unranked": 0.0,
    }


def test_xor_retrieve_recall_macro_averages_languages_with_different_counts():
    filler = " ".join(["filler"] * 100)  # 100 tokens per passage
    # "needle" is token 3001: outside the 2,000-token window, inside the 5,000-token one.
    late = [filler] * 30 + ["needle"]
    ranked = {
        "ar1": ["needle"],  # hit at both budgets
        "bn1": ["needle"],  # hit at both budgets
        "bn2": late,  # hit at 5kt only
        "bn3": [filler],  # miss
        "bn4": ["yes"],  # yes/no only: skipped
    }
    answers = {"ar1": ["needle"], "bn1": ["needle"], "bn2": ["needle"], "bn3": ["needle"]}
    answers["bn4"] = ["yes"]
    langs = {"ar1": "ar", "bn1": "bn", "bn2": "bn", "bn3": "bn", "bn4": "bn"}

    per_query = xor_retrieve_recall(ranked, answers)
    summary = aggregate(per_query, langs)

    assert per_query["bn2"] == {"R@2kt": 0.0, "R@5kt": 1.0}
    assert "bn4" not in per_query
    # R@2kt: ar 1/1 = 1, bn 1/3; macro (1 + 1/3)/2 = 2/3; micro 2/4 = 0.5.
    # R@5kt: ar 1/1 = 1, bn 2/3; macro (1 + 2/3)/2 = 5/6; micro 3/4.
    assert summary["queries"] == {"ar": 1, "bn": 3}
    assert summary["macro"] == pytest.approx({"R@2kt": 2 / 3, "R@5kt": 5 / 6})
    assert summary["micro"] == pytest.approx({"R@2kt": 0.5, "R@5kt": 0.75})


def test_recall_budgets_must_be_positive():
    with pytest.raises(ConfigError, match="token budgets must be positive"):
        recall_at_kt({"q": ["a"]}, {"q": ["a"]}, max_tokens=0)


def test_paired_ttest_matches_a_hand_computed_case():
    # d = (0.1, 0.2, 0.3): mean 0.2, sample sd 0.1, t = 0.2 / (0.1 / sqrt(3)) = 2 sqrt(3).
    # With 2 degrees of freedom P(|T| > t) = 1 - t / sqrt(t^2 + 2) = 1 - sqrt(12/14).
    a = {"q1": 0.5, "q2": 0.7, "q3": 0.9}
    b = {"q3": 0.6, "q2": 0.5, "q1": 0.4}  # order of keys must not matter
    t, p = paired_ttest(a, b)
    assert t == pytest.approx(2 * math.sqrt(3))
    assert p == pytest.approx(1 - math.sqrt(12 / 14))


def test_paired_ttest_uses_only_shared_queries_and_agrees_with_scipy():
    rng = np.random.default_rng(3)
    x, y = rng.random(50), rng.random(50)
    a = {f"q{i}": float(v) for i, v in enumerate(x)} | {"only_a": 1.0}
    b = {f"q{i}": float(v) for i, v in reversed(list(enumerate(y)))} | {"only_b": 0.0}

    t, p = paired_ttest(a, b)

    expected = stats.ttest_rel(x, y)
    assert (t, p) == pytest.approx((expected.statistic, expected.pvalue))


def test_paired_ttest_degenerate_cases():
    # Every difference 0: no evidence of a difference, defined as t = 0, p = 1.
    assert paired_ttest({"a": 0.3, "b": 0.6}, {"a": 0.3, "b": 0.6}) == (0.0, 1.0)
    # Constant non-zero difference (+1 or -1 on every query): zero variance, certain sign.
    assert paired_ttest({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.0, "b": 1.0, "c": 2.0}) == (
        math.inf,
        0.0,
    )
    assert paired_ttest({"a": 0.0, "b": 1.0}, {"a": 1.0, "b": 2.0}) == (-math.inf, 0.0)


def test_paired_ttest_needs_two_shared_queries():
    with pytest.raises(InputError, match="got 0"):
        paired_ttest({"a": 1.0}, {"b": 1.0})
    with pytest.raises(InputError, match="got 1"):
        paired_ttest({"a": 1.0, "b": 0.0}, {"a": 0.5})
