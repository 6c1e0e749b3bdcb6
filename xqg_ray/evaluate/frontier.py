"""The frontier: xqg's (and multivector's) test gain over dense against indexing cost.

Axes: n queries per language (nested: n = 2 is the first two of the stored draws, by `k`) and
the number of generated languages a passage folds in for a query in language L: L itself first,
then the others in a fixed order per L (sorted by SHA-256 of `seed:L>other`, `split.seed`). At
every point xqg's reduce and alpha are chosen on dev (tuning's grid), then scored once on test
(`remix.py`: exact re-mixing from the stored per-query vectors). A point's cost per 1,000
passages is the cost probe's measured rates (cost.json) composed linearly: passage encoding plus
queries x (generation per query + encoding per query), for the index that serves one query
language (languages x n queries per passage).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xqg_ray.config import RunConfig
from xqg_ray.datasets.splits import seed_digest
from xqg_ray.evaluate.figures import png_bytes
from xqg_ray.evaluate.remix import Mix, Part, choose_and_test, read_queries, test_label

QUERIES_PER_LANGUAGE = (1, 2, 3, 5, 10)
LANGUAGE_COUNTS = (1, 3, 5, None)  # None: every generated language


def language_order(query_lang: str, languages: list[str], seed: int) -> list[str]:
    """The generated languages a query in `query_lang` folds in first: its own, then the others
    in a seeded order."""
    others = [lang for lang in languages if lang != query_lang]
    others.sort(key=lambda lang: seed_digest(seed, f"{query_lang}>{lang}"))
    return [query_lang, *others] if query_lang in languages else others


def generated_languages(cfg: RunConfig) -> list[str]:
    return sorted(cfg.augment.languages or cfg.generator.languages)


@dataclass(frozen=True)
class GridPlanner:
    """The part's mixes at each (n, languages) point, for every query language."""

    points: tuple[tuple[int, int], ...]
    query_langs: tuple[str, ...]
    seed: int

    def __call__(self, cfg: RunConfig, part: Part) -> list[Mix]:
        languages = generated_languages(cfg)
        entries = np.arange(len(part.row_k))
        mixes = []
        for n, count in self.points:
            keep = entries[part.row_k < n]
            mixes.append(
                Mix(
                    passage=part.row_passage[keep],
                    vector=keep,
                    lang=part.row_lang[keep],
                    languages={
                        q: language_order(q, languages, self.seed)[:count] for q in self.query_langs
                    },
                )
            )
        return mixes


def grid(cfg: RunConfig) -> list[tuple[int, int]]:
    """The (n, languages) points the stored draws allow."""
    drawn = cfg.generator.queries_per_language
    total = len(generated_languages(cfg))
    counts = sorted({min(c or total, total) for c in LANGUAGE_COUNTS})
    return [(n, c) for n in QUERIES_PER_LANGUAGE if n <= drawn for c in counts]


def cost_rates(cost: dict[str, Any], encoder: str) -> dict[str, float]:
    """Seconds per passage encoded, per query generated and per query encoded, from cost.json
    (either format: `generation.run` or the older flat `generation`)."""
    run = cost["generation"].get("run", cost["generation"])
    per_language = run.get("seconds_per_passage_language") or (
        run["seconds_per_passage"] / run["languages"]
    )
    rates = cost["encoders"].get(encoder) or next(iter(cost["encoders"].values()))
    return {
        "passage_s": rates["passage"]["seconds_per_unit"],
        "generate_query_s": per_language / run["queries_per_language"],
        "encode_query_s": rates["query"]["seconds_per_unit"],
    }


def cost_per_1k(rates: dict[str, float], queries: int) -> float:
    return 1000 * (
        rates["passage_s"] + queries * (rates["generate_query_s"] + rates["encode_query_s"])
    )


def cheapest_within_best(points: list[dict[str, Any]], measure: str = "R@1") -> dict[str, Any]:
    """The cheapest xqg point whose CI overlaps the CI of the point with the largest gain."""
    best = max(points, key=lambda p: p["xqg"][measure]["delta"])
    low = best["xqg"][measure]["ci"][0]
    near = [p for p in points if p["xqg"][measure]["ci"][1] >= low]
    return min(near, key=lambda p: (p["cost_s_per_1k"], p["queries"]))


def run_frontier(cfg: RunConfig, cost: dict[str, Any]) -> dict[str, Any]:
    """Every grid point: queries per passage, cost, dev choice, test gains with CIs."""
    split = read_queries(cfg)
    points = grid(cfg)
    planner = GridPlanner(tuple(points), tuple(split.test.searched), cfg.split.seed)
    scored = choose_and_test(cfg, split, planner, len(points), "frontier")
    rates = cost_rates(cost, cfg.encoder.name)
    rows = [
        {
            "n": n,
            "languages": count,
            "queries": n * count,
            "cost_s_per_1k": cost_per_1k(rates, n * count),
            **row,
        }
        for (n, count), row in zip(points, scored, strict=True)
    ]
    return {
        "label": test_label(split),
        "setting": split.setting,
        "language_rule": "the query's own language, then the others by SHA-256 of "
        f"'{cfg.split.seed}:<query lang>><other>'",
        "cost_rates": rates,
        "cost_hardware": cost.get("hardware"),
        "points": rows,
        "best": max(rows, key=lambda p: p["xqg"]["R@1"]["delta"]),
        "cheapest_within_best": cheapest_within_best(rows),
    }


def point_name(point: dict[str, Any]) -> str:
    return f"n={point['n']} x {point['languages']} lang"


def lines(result: dict[str, Any]) -> list[str]:
    """A few lines for the terminal and the report."""
    best, cheap = result["best"], result["cheapest_within_best"]

    def cell(point: dict[str, Any]) -> str:
        test = point["xqg"]["R@1"]
        return (
            f"{point_name(point)} ({point['cost_s_per_1k']:,.0f} s per 1,000 passages): "
            f"xqg dR@1 {test['delta']:+.3f} [{test['ci'][0]:+.3f}, {test['ci'][1]:+.3f}]"
        )

    return [f"largest gain: {cell(best)}", f"cheapest within its CI: {cell(cheap)}"]


def plot_png(result: dict[str, Any]) -> bytes:
    """Test dR@1 vs dense (95% CI bars) against indexing cost per 1,000 passages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    points = result["points"]
    for strategy, marker, shift in (("xqg", "o", 1.0), ("multivector", "s", 1.04)):
        x = [p["cost_s_per_1k"] * shift for p in points]
        y = [p[strategy]["R@1"]["delta"] for p in points]
        err = np.array(
            [
                [d - p[strategy]["R@1"]["ci"][0], p[strategy]["R@1"]["ci"][1] - d]
                for p, d in zip(points, y, strict=True)
            ]
        ).T
        ax.errorbar(x, y, yerr=err, fmt=marker, capsize=2, markersize=4, label=strategy)
    for p in points:
        ax.annotate(
            f"{p['n']}x{p['languages']}",
            (p["cost_s_per_1k"], p["xqg"]["R@1"]["delta"]),
            fontsize=6,
            xytext=(3, 3),
            textcoords="offset points",
        )
    cheap = result["cheapest_within_best"]
    ax.plot(
        [cheap["cost_s_per_1k"]],
        [cheap["xqg"]["R@1"]["delta"]],
        "r*",
        markersize=12,
        label="cheapest within the best's CI",
    )
    ax.axhline(0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("indexing cost, s per 1,000 passages (measured rates, linear in queries)")
    ax.set_ylabel("test dR@1 vs dense (95% CI)")
    ax.set_title(result["label"], fontsize=7)
    ax.legend(fontsize=7)
    return png_bytes(fig)
