"""Evaluate runs: per-query measures, per-language and macro averages, t-tests against dense."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.evaluate.metrics import aggregate, evaluate_run, paired_ttest

BASELINE = "dense"


def judged_qrels(qrels: pa.Table, queries: pa.Table, passages: pa.Table) -> pa.Table:
    """Qrels restricted to the evaluated queries and the indexed passages (the setting)."""
    keep = pc.and_(pc.is_in(qrels["qid"], queries["qid"]), pc.is_in(qrels["pid"], passages["pid"]))
    return qrels.filter(keep)


def evaluate_strategies(
    runs: dict[str, pa.Table], qrels: pa.Table, queries: pa.Table, measures: list[str]
) -> dict[str, Any]:
    """Metrics of every strategy's run, with paired t-tests of each strategy against `dense`."""
    langs = dict(zip(queries["qid"].to_pylist(), queries["lang"].to_pylist(), strict=True))
    per_query = {name: evaluate_run(run, qrels, measures) for name, run in runs.items()}
    results: dict[str, Any] = {}
    for name, scores in per_query.items():
        summary = aggregate(scores, langs)
        if BASELINE in per_query and name != BASELINE:
            summary["ttest_vs_dense"] = significance(scores, per_query[BASELINE], langs, measures)
        results[name] = summary
    return {"strategies": results, "per_query": per_query}


def significance(
    scores: dict[str, dict[str, float]],
    baseline: dict[str, dict[str, float]],
    langs: dict[str, str],
    measures: list[str],
) -> dict[str, dict[str, dict[str, float]]]:
    """Paired t-test p-values per measure, over all queries and within each language."""
    groups: dict[str, list[str]] = {"all": list(scores)}
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


def per_query_table(per_query: dict[str, dict[str, dict[str, float]]]) -> pa.Table:
    """Long format (strategy, qid, measure, value): what significance tests and plots consume."""
    rows: dict[str, list] = {"strategy": [], "qid": [], "measure": [], "value": []}
    for strategy, scores in per_query.items():
        for qid, values in scores.items():
            for measure, value in values.items():
                rows["strategy"].append(strategy)
                rows["qid"].append(qid)
                rows["measure"].append(measure)
                rows["value"].append(float(value))
    return pa.table(rows)
