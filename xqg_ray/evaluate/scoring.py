"""Score runs: per-query measures, per-language and macro averages, paired tests against dense.

Two kinds of measures: judged ones (ir_measures names and XTREME-R `mAP@k`) need qrels; the
XOR-Retrieve `R@<n>kt` ones need the queries' answer strings and the ranked passages' texts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.evaluate.metrics import aggregate, evaluate_run, xor_retrieve_recall
from xqg_ray.evaluate.paired import holm, paired_test

BASELINE = "dense"
_KT = re.compile(r"R@(\d+(?:\.\d+)?)kt")


def judged_qrels(qrels: pa.Table, queries: pa.Table, passages: pa.Table) -> pa.Table:
    """Qrels restricted to the evaluated queries and the indexed passages (the setting)."""
    keep = pc.and_(pc.is_in(qrels["qid"], queries["qid"]), pc.is_in(qrels["pid"], passages["pid"]))
    return qrels.filter(keep)


def kt_budget(measure: str) -> int | None:
    """`R@2kt` -> 2000 word tokens; None for a measure that is not an R@kt one."""
    match = _KT.fullmatch(measure)
    return round(float(match.group(1)) * 1000) if match else None


def score_run(
    run: pa.Table,
    measures: Sequence[str],
    qrels: pa.Table,
    answers: Mapping[str, Sequence[str]],
    texts: Mapping[str, str],
) -> dict[str, dict[str, float]]:
    """Per-query values of every measure; a query is kept when all of them apply to it."""
    judged = [m for m in measures if kt_budget(m) is None]
    budgets = [kt_budget(m) for m in measures if kt_budget(m) is not None]
    parts = []
    if judged:
        parts.append(evaluate_run(run, qrels, judged))
    if budgets:
        parts.append(xor_retrieve_recall(ranked_texts(run, texts), answers, budgets))
    qids = set.intersection(*(set(part) for part in parts))
    return {
        qid: {name: value for part in parts for name, value in part[qid].items()}
        for qid in sorted(qids)
    }


def ranked_texts(run: pa.Table, texts: Mapping[str, str]) -> dict[str, list[str]]:
    """Each query's passage texts in rank order (what R@kt tokenises)."""
    ordered = run.sort_by([("qid", "ascending"), ("rank", "ascending")])
    out: dict[str, list[str]] = {}
    for qid, pid in zip(ordered["qid"].to_pylist(), ordered["pid"].to_pylist(), strict=True):
        out.setdefault(qid, []).append(texts[pid])
    return out


def summarize(
    per_query: dict[str, dict[str, dict[str, float]]],
    langs: Mapping[str, str],
    measures: list[str],
    monolingual: frozenset[str] = frozenset(),
    groups: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Each strategy's per-language and macro averages, with paired tests against `dense`.

    When some query languages search passages of their own language (`monolingual`, en->en in
    X->en) and others do not, `macro_cross_lingual` averages the others only, and the tests get
    a `cross_lingual` pool: XOR-Retrieve's headline averages cross-lingual languages only.
    `groups` (qid -> question group) makes the pooled tests' unit the group (`significance`).
    """
    results: dict[str, Any] = {}
    for name, scores in per_query.items():
        summary = aggregate(scores, langs)
        cross = [lang for lang in summary["per_lang"] if lang not in monolingual]
        if monolingual and cross and len(cross) < len(summary["per_lang"]):
            summary["macro_cross_lingual"] = {
                m: fmean(summary["per_lang"][lang][m] for lang in cross) for m in measures
            }
            summary["cross_lingual_languages"] = cross
        if BASELINE in per_query and name != BASELINE:
            summary["ttest_vs_dense"] = significance(
                scores, per_query[BASELINE], langs, measures, monolingual, groups
            )
        results[name] = summary
    return results


def significance(
    scores: dict[str, dict[str, float]],
    baseline: dict[str, dict[str, float]],
    langs: Mapping[str, str],
    measures: list[str],
    monolingual: frozenset[str] = frozenset(),
    groups: Mapping[str, str] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Paired tests per measure (`paired.paired_test`: t-test and bootstrap CI), by pool.

    Over all queries and over the cross-lingual ones (when some are monolingual) the unit is the
    question group, valued by the mean over its queries in the pool (each query alone where
    `groups` has none); within each language the unit is the query, and `p_holm` corrects the
    languages' p-values of one measure for their number (Holm).
    """
    pools: dict[str, list[str]] = {"all": list(scores)}
    if monolingual:
        cross = [qid for qid in scores if langs[qid] not in monolingual]
        if cross and len(cross) < len(scores):
            pools["cross_lingual"] = cross
    by_language: dict[str, list[str]] = {}
    for qid in scores:
        by_language.setdefault(langs[qid], []).append(qid)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for pool, qids in sorted({**by_language, **pools}.items()):
        shared = [q for q in qids if q in baseline]
        if len(shared) < 2:  # a t-test needs two paired queries
            continue
        units = groups if pool in pools else None
        out[pool] = {
            m: paired_test(
                {q: scores[q][m] for q in shared}, {q: baseline[q][m] for q in shared}, units
            )
            for m in measures
        }
    tested = [lang for lang in sorted(by_language) if lang in out and lang not in pools]
    for measure in measures:
        adjusted = holm([out[lang][measure]["p"] for lang in tested])
        for lang, p_holm in zip(tested, adjusted, strict=True):
            out[lang][measure]["p_holm"] = p_holm
    return out


PER_QUERY_SCHEMA = pa.schema(
    [
        ("setting", pa.string()),
        ("strategy", pa.string()),
        ("qid", pa.string()),
        ("lang", pa.string()),
        ("group", pa.string()),
        ("measure", pa.string()),
        ("value", pa.float64()),
    ]
)


def per_query_table(
    setting: str,
    per_query: dict[str, dict[str, dict[str, float]]],
    langs: Mapping[str, str],
    groups: Mapping[str, str] | None = None,
) -> pa.Table:
    """Long format (setting, strategy, qid, lang, group, measure, value): what the paired tests
    and plots read; `group` is the query's question group (the qid itself without one)."""
    groups = groups or {}
    rows: dict[str, list] = {name: [] for name in PER_QUERY_SCHEMA.names}
    for strategy, scores in per_query.items():
        for qid, values in scores.items():
            for measure, value in values.items():
                rows["setting"].append(setting)
                rows["strategy"].append(strategy)
                rows["qid"].append(qid)
                rows["lang"].append(langs[qid])
                rows["group"].append(groups.get(qid, qid))
                rows["measure"].append(measure)
                rows["value"].append(float(value))
    return pa.table(rows, schema=PER_QUERY_SCHEMA)
