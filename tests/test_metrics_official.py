"""R@kt and mAP@20 against transcriptions of the official functions, on randomised cases.

The transcriptions follow the published evaluation code line by line: XOR-Retrieve's
`evaluate_top_k_hit` (AkariAsai/XORQA `evals/eval_xor_retrieve.py`) and LAReQA's
`average_precision_at_k` (google-research/xtreme `third_party/utils_lareqa.py`), which XTREME-R
uses for XQuAD-R's mAP@20.
"""

from __future__ import annotations

import random
from statistics import mean

import pyarrow as pa
import pytest

from xqg_ray.evaluate.metrics import (
    aggregate,
    map_at_k_xtreme,
    official_tokenizer,
    punkt_installed,
    xor_retrieve_recall,
    xor_word_tokenize,
)
from xqg_ray.schema import QRELS

WORDS = ["the", "river", "Paris", "1775", "king's", "(north)", "U.S.", "yes", "no", "state-run"]
WORDS += ["tax", "Mr.", "town.", '"quoted"', "don't", "42%", "east", "a", "west", "coast"]


def official_evaluate_top_k_hit(results, gt_answers, max_token_num, word_tokenize):
    """Transcription of `evaluate_top_k_hit`, per-language hit rates in percent."""
    per_lang = {}
    for item in results:
        q_id, lang, ctxs = item["id"], item["lang"], item["ctxs"]
        per_lang.setdefault(lang, {"count": 0, "hit": 0})
        if q_id not in gt_answers:
            continue
        answers = gt_answers[q_id]
        span_answers = [answer for answer in answers if answer not in ["yes", "no"]]
        if len(span_answers) == 0:
            continue
        per_lang[lang]["count"] += 1
        concat_string_tokens = []
        for ctx_text in ctxs:
            concat_string_tokens += word_tokenize(ctx_text)
            if len(concat_string_tokens) >= max_token_num:
                break
        concat_string = " ".join(concat_string_tokens[:max_token_num])
        if any(answer in concat_string for answer in span_answers):
            per_lang[lang]["hit"] += 1
    return {lang: 100 * r["hit"] / r["count"] for lang, r in per_lang.items() if r["count"] > 0}


def official_average_precision_at_k(targets, ranked_predictions, k=None):
    """Transcription of LAReQA's `average_precision_at_k`."""
    if k:
        ranked_predictions = ranked_predictions[:k]
    score = 0.0
    hits = 0.0
    for i, pred in enumerate(ranked_predictions):
        if pred in targets and pred not in ranked_predictions[:i]:
            hits += 1.0
            score += hits / (i + 1.0)
    divisor = min(len(targets), k) if k else len(targets)
    return score / divisor


def nltk_word_tokenize(text: str) -> list[str]:
    """The official script's tokenisation, taken from NLTK here: `word_tokenize`, which needs
    the Punkt data; where Punkt is not installed, the same call without sentence splitting."""
    from nltk.tokenize import word_tokenize

    try:
        return word_tokenize(text)
    except LookupError:
        return word_tokenize(text, preserve_line=True)


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


@pytest.mark.parametrize("seed", range(6))
def test_r_at_kt_equals_the_official_function(seed):
    rng = random.Random(seed)
    budgets = sorted(rng.sample([5, 20, 50, 120, 300], 2))
    results, answers, langs = [], {}, {}
    for i in range(60):
        qid, lang = f"q{i}", rng.choice(["ar", "bn", "fi", "ja"])
        ctxs = [_text(rng, rng.randint(1, 40)) for _ in range(rng.randint(1, 12))]
        results.append({"id": qid, "lang": lang, "ctxs": ctxs})
        langs[qid] = lang
        if rng.random() < 0.9:
            pool = [*WORDS, "river Paris", "king 's", "Mr. tax", "absent answer"]
            answers[qid] = rng.sample(pool, rng.randint(1, 3))
    ranked = {item["id"]: item["ctxs"] for item in results}
    ours = xor_retrieve_recall(ranked, answers, budgets)
    summary = aggregate(ours, langs)
    for budget in budgets:
        official = official_evaluate_top_k_hit(results, answers, budget, nltk_word_tokenize)
        name = f"R@{budget / 1000:g}kt"
        assert set(summary["per_lang"]) == set(official)
        for lang, value in official.items():
            assert 100 * summary["per_lang"][lang][name] == pytest.approx(value)
        assert 100 * summary["macro"][name] == pytest.approx(mean(official.values()))


def test_the_tokenizer_gives_nltks_tokens_and_offline_keeps_a_final_period_attached():
    text = "The king's army left in 1775. Then (north) U.S. state-run tax."
    assert official_tokenizer()(text) == nltk_word_tokenize(text)
    if not punkt_installed():  # the one documented difference from the official call
        assert xor_word_tokenize(text)[6:8] == ["1775.", "Then"]


@pytest.mark.parametrize("seed", range(6))
def test_map_at_20_equals_the_official_function(seed):
    rng = random.Random(seed)
    pids = [f"p{i}" for i in range(60)]
    qrels, run, targets, ranked = [], [], {}, {}
    for i in range(40):
        qid = f"q{i}"
        targets[qid] = rng.sample(pids, rng.randint(1, 30))
        qrels += [(qid, pid, rng.randint(1, 2)) for pid in targets[qid]]
        ranked[qid] = rng.sample(pids, rng.randint(0, 45))
        run += [(qid, pid, -rank, rank + 1) for rank, pid in enumerate(ranked[qid])]
    table = pa.table(
        dict(zip(("qid", "pid", "relevance"), map(list, zip(*qrels, strict=True)), strict=True)),
        schema=QRELS,
    )
    ours = map_at_k_xtreme(run, table, k=20)
    for qid in targets:
        expected = official_average_precision_at_k(targets[qid], ranked[qid], k=20)
        assert ours[qid] == pytest.approx(expected), qid
