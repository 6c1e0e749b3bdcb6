"""Paired comparisons of a system with a baseline: t-test and bootstrap CI over units, Holm.

Translations of one question are one sample, not eleven (DESIGN.md, section 2): XQuAD's and
XQuAD-R's queries share a `group` (the question id), so the unit of a pooled test is the group,
whose value is the mean over its queries in the pool (its cross-lingual translations, in the
cross-lingual pooling). Testing the 5,240 cross-lingual queries of 524 questions as if they were
independent overstates the evidence tenfold. A dataset without groups makes each query its own
unit, which is the per-query test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from xqg_ray.evaluate.metrics import paired_ttest

RESAMPLES = 10_000
CONFIDENCE = 0.95
SEED = 0
GROUP, QUERY = "question group", "query"
_BOOTSTRAP_CELLS = 4_000_000  # resamples x units held at once (32 MB of float64)


def unit_means(
    a: Mapping[str, float], b: Mapping[str, float], groups: Mapping[str, str]
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The units of the queries both systems scored (a query's group, or the query itself when
    `groups` has none for it), sorted; each unit's mean of `a` and of `b`; its query count."""
    shared = sorted(a.keys() & b.keys())
    keys = np.array([groups.get(qid, qid) for qid in shared], dtype=object)
    units, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    x = np.bincount(inverse, weights=np.array([a[q] for q in shared], dtype=np.float64))
    y = np.bincount(inverse, weights=np.array([b[q] for q in shared], dtype=np.float64))
    return units.tolist(), x / counts, y / counts, counts


def bootstrap_ci(
    differences: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """Percentile CI of the mean paired difference, resampling units with replacement (seeded,
    so the same differences always give the same interval)."""
    if np.ptp(differences) == 0:  # every resample has the same mean: scipy warns on this
        return float(differences[0]), float(differences[0])
    result = stats.bootstrap(
        (differences,),
        np.mean,
        n_resamples=resamples,
        batch=max(1, _BOOTSTRAP_CELLS // len(differences)),
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_test(
    a: Mapping[str, float],
    b: Mapping[str, float],
    groups: Mapping[str, str] | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, Any]:
    """`a` against the baseline `b` over their shared queries, with each query's group (from
    `groups`; None: every query alone) as the unit: the two-sided paired t-test
    (`scipy.stats.ttest_rel` through `metrics.paired_ttest`) and the paired bootstrap CI of the
    mean difference over units.

    Returns JSON-ready `t` (None for a constant non-zero difference: JSON has no infinity), `p`,
    `delta` (mean over units of the unit's difference), `ci` [low, high], `n` (units), `unit`
    (`question group` when some unit holds several queries, else `query`) and
    `queries_per_unit` (mean).
    """
    units, x, y, counts = unit_means(a, b, groups or {})
    t_stat, p_value = paired_ttest(
        dict(zip(units, x, strict=True)), dict(zip(units, y, strict=True))
    )
    differences = x - y
    low, high = bootstrap_ci(differences, resamples, seed)
    return {
        "t": t_stat if math.isfinite(t_stat) else None,
        "p": p_value,
        "delta": float(differences.mean()),
        "ci": [low, high],
        "n": len(units),
        "unit": GROUP if counts.max() > 1 else QUERY,
        "queries_per_unit": float(counts.mean()),
    }


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order: the i-th smallest of m is
    multiplied by m - i + 1, made monotone, capped at 1 (scipy offers BH and BY only)."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (len(p) - np.arange(len(p)))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted.tolist()


def count_text(test: Mapping[str, Any]) -> str:
    """`524 question groups` or `5,240 queries`."""
    return f"{test['n']:,} " + ("question groups" if test["unit"] == GROUP else "queries")


def unit_text(test: Mapping[str, Any], pool: str = "") -> str:
    """How a report names a test's unit: `question group (the mean over its 10 cross-lingual
    translations), n = 524 groups`, or `query, n = 5,240 queries`; a test recorded before
    tests had units (pooled over queries) says so."""
    if "unit" not in test:
        return f"{QUERY} (an evaluation from before grouped tests: re-run it)"
    if test["unit"] != GROUP:
        return f"{QUERY}, n = {test['n']:,} queries"
    kind = f"{pool} " if pool else ""
    return (
        f"{GROUP} (the mean over its {test['queries_per_unit']:.3g} {kind}translations), "
        f"n = {test['n']:,} groups"
    )
