"""Score runs: per-query measures, per-language and macro averages, t-tests against dense.

Two kinds of measures: judged ones (ir_measures names and XTREME-R `mAP@k`) need qrels; the
XOR-Retrieve `R@<n>kt` ones need the queries' answer strings and the ranked passages' texts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.evaluate.metrics import aggregate, evaluate_run, paired_ttest, xor_retrieve_recall

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
) -> dict[str, Any]:
    """Each strategy's per-language and macro averages, with t-tests against `dense`.

    When some query languages search passages of their own language (`monolingual`, en->en in
    X->en) and others do not, `macro_cross_lingual` averages the others only, and the t-tests
    get a `cross_lingual` group: XOR-Retrieve's headline averages cross-lingual languages only.
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
                scores, per_query[BASELINE], langs, measures, monolingual
            )
        results[name] = summary
    return results


def significance(
    scores: dict[str, dict[str, float]],
    baseline: dict[str, dict[str, float]],
    langs: Mapping[str, str],
    measures: list[str],
    monolingual: frozenset[str] = frozenset(),
) -> dict[str, dict[str, dict[str, float]]]:
    """Paired t-test p-values per measure, over all queries, the cross-lingual ones (when some
    are monolingual) and within each language."""
    groups: dict[str, list[str]] = {"all": list(scores)}
    if monolingual:
        cross = [qid for qid in scores if langs[qid] not in monolingual]
        if cross and len(cross) < len(scores):
            groups["cross_lingual"] = cross
    for qid in scores:
        groups.setdefault(langs[qid], []).append(qid)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for group, qids in sorted(groups.items()):
        shared = [q for q in qids if q in baseline]
        if len(shared) < 2:  # a t-test needs two paired queries
            continue
        out[group] = {}
        for measure in measures:
            a = {q: scores[q][measure] for q in shared}
            b = {q: baseline[q][measure] for q in shared}
            t_stat, p_value = paired_ttest(a, b)
            # a constant difference gives t = +-inf: JSON has no infinity, so it is stored as null
            out[group][measure] = {"t": t_stat if math.isfinite(t_stat) else None, "p": p_value}
    return out


PER_QUERY_SCHEMA = pa.schema(
    [
        ("setting", pa.string()),
        ("strategy", pa.string()),
        ("qid", pa.string()),
        ("lang", pa.string()),
        ("measure", pa.string()),
        ("value", pa.float64()),
    ]
)


def per_query_table(
    setting: str, per_query: dict[str, dict[str, dict[str, float]]], langs: Mapping[str, str]
) -> pa.Table:
    """Long format (setting, strategy, qid, lang, measure, value): what t-tests and plots read."""
    rows: dict[str, list] = {name: [] for name in PER_QUERY_SCHEMA.names}
    for strategy, scores in per_query.items():
        for qid, values in scores.items():
            for measure, value in values.items():
                rows["setting"].append(setting)
                rows["strategy"].append(strategy)
                rows["qid"].append(qid)
                rows["lang"].append(langs[qid])
                rows["measure"].append(measure)
                rows["value"].append(float(value))
    return pa.table(rows, schema=PER_QUERY_SCHEMA)
