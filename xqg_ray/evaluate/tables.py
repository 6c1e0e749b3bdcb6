"""Plain-text and Markdown tables of evaluation results, as the CLI prints and reports embed."""

from __future__ import annotations

from typing import Any

from xqg_ray.evaluate.paired import CONFIDENCE, RESAMPLES, unit_text

DISPLAY = {"RR@10": "MRR@10"}


def display_name(measure: str) -> str:
    return DISPLAY.get(measure, measure)


def headline(summary: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any], str]:
    """A strategy's headline macro values, their t-tests against dense and a label: over the
    cross-lingual query languages when the setting has monolingual ones too (XOR-Retrieve's
    convention), else over all languages."""
    tests = summary.get("ttest_vs_dense", {})
    if "macro_cross_lingual" in summary:
        return summary["macro_cross_lingual"], tests.get("cross_lingual", {}), "cross-lingual"
    return summary["macro"], tests.get("all", {}), "all languages"


def _render(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(lines)


def strategy_language_table(
    results: dict[str, Any], measures: list[str], markdown: bool = False
) -> str:
    """Rows (language, strategy), columns measures; then the macro average of every strategy."""
    strategies = list(results)
    langs = sorted({lang for r in results.values() for lang in r["per_lang"]})
    header = ["lang", "strategy", *[display_name(m) for m in measures], "queries"]
    rows = []
    for lang in [*langs, "macro"]:
        for strategy in strategies:
            summary = results[strategy]
            values = summary["macro"] if lang == "macro" else summary["per_lang"].get(lang)
            if values is None:
                continue
            count = (
                sum(summary["queries"].values()) if lang == "macro" else summary["queries"][lang]
            )
            rows.append([lang, strategy, *[f"{values[m]:.3f}" for m in measures], str(count)])
    for strategy in strategies:
        summary = results[strategy]
        if "macro_cross_lingual" in summary:
            values = summary["macro_cross_lingual"]
            count = sum(summary["queries"][lang] for lang in summary["cross_lingual_languages"])
            row = ["macro X", strategy, *[f"{values[m]:.3f}" for m in measures], str(count)]
            rows.append(row)
    return _render(header, rows, markdown)


def delta_text(delta: float, test: dict[str, Any]) -> str:
    """`+0.013 [-0.001, +0.026], p=0.059`: a difference from dense, the paired bootstrap CI over
    the test's units and its paired t-test p-value (no CI in a test recorded without one)."""
    if not test.get("ci"):
        return f"{delta:+.3f}, p={test['p']:.2g}"
    low, high = test["ci"]
    return f"{delta:+.3f} [{low:+.3f}, {high:+.3f}], p={test['p']:.2g}"


def unit_line(results: dict[str, Any]) -> str:
    """What the headline tests pair: their unit and its count, the test and the CI."""
    for summary in results.values():
        _, tests, label = headline(summary)
        if tests:
            break
    else:
        return "No paired tests (no `dense` baseline, or fewer than two shared queries)."
    first = next(iter(tests.values()))
    pool = "cross-lingual" if label == "cross-lingual" else ""
    return (
        f"Paired tests against dense over {label} queries, unit: {unit_text(first, pool)}; "
        f"two-sided paired t-test, {CONFIDENCE:.0%} CI of Δ by paired bootstrap over the units "
        f"({RESAMPLES:,} resamples, seeded)."
    )


def significance_table(results: dict[str, Any], measures: list[str], markdown: bool = False) -> str:
    """Each strategy's headline macro score (cross-lingual languages where the setting also has
    monolingual ones), its difference from dense with the CI and p-value of the paired tests
    over question groups (`unit_line` says the unit)."""
    label = headline(next(iter(results.values())))[2] if results else "all languages"
    header = [
        "strategy",
        *[f"{display_name(m)} (Δ dense [{CONFIDENCE:.0%} CI], p; {label})" for m in measures],
    ]
    rows = []
    base = results.get("dense")
    for strategy, summary in results.items():
        values, tests, _ = headline(summary)
        cells = [strategy]
        for measure in measures:
            value = values[measure]
            test = tests.get(measure)
            if base is None or test is None:
                cells.append(f"{value:.3f}")
            else:
                delta = value - headline(base)[0][measure]
                cells.append(f"{value:.3f} ({delta_text(delta, test)})")
        rows.append(cells)
    return _render(header, rows, markdown)


def _cell(value: float | None, test: dict[str, Any] | None, base: float | None = None) -> str:
    """A language's value with its Holm-corrected p; a macro value with Δ, CI and p."""
    if value is None:
        return "–"
    if test is None:
        return f"{value:.3f}"
    if "p_holm" in test:
        return f"{value:.3f} (Holm p={test['p_holm']:.2g})"
    return f"{value:.3f} ({delta_text(value - base, test)})"


def language_table(results: dict[str, Any], measure: str, markdown: bool = False) -> str:
    """Rows strategies, columns query languages and the macro averages, for one measure.

    Every strategy but dense shows, per language, its paired t-test against dense over the
    language's queries, Holm-corrected over the languages; per macro, Δ dense with the CI and
    p of the paired tests over question groups (macro: all languages; macro X: cross-lingual).
    """
    langs = sorted({lang for r in results.values() for lang in r["per_lang"]})
    cross = any("macro_cross_lingual" in r for r in results.values())
    header = ["strategy", *langs, "macro", *(["macro X (cross-lingual)"] if cross else [])]
    dense = results.get("dense", {})
    rows = []
    for strategy, summary in results.items():
        tests = summary.get("ttest_vs_dense", {})
        cells = [strategy]
        for lang in langs:
            value = summary["per_lang"].get(lang, {}).get(measure)
            cells.append(_cell(value, tests.get(lang, {}).get(measure)))
        base = dense.get("macro", {}).get(measure)
        cells.append(_cell(summary["macro"][measure], tests.get("all", {}).get(measure), base))
        if cross:
            value = summary.get("macro_cross_lingual", {}).get(measure)
            base = dense.get("macro_cross_lingual", {}).get(measure)
            cells.append(_cell(value, tests.get("cross_lingual", {}).get(measure), base))
        rows.append(cells)
    return _render(header, rows, markdown)


def _pairs_line(pairs: list[dict[str, Any]]) -> str:
    """`de, en -> de+en`: query languages grouped by the passage languages they search."""
    by_target: dict[str, list[str]] = {}
    for pair in pairs:
        by_target.setdefault("+".join(pair["passage_languages"]), []).append(pair["query_language"])
    return "; ".join(f"{', '.join(q)} → {target}" for target, q in by_target.items())


def evaluation_markdown(evaluation: dict[str, Any]) -> str:
    """The evaluation report: per setting, one strategy x language table per measure."""
    lines = [f"# Evaluation: {evaluation['experiment']}", ""]
    generator = f"`{evaluation['generator']}`" if evaluation["generator"] else "none"
    lines.append(
        f"Encoder `{evaluation['encoder']}`, generator {generator}; search "
        f"via {evaluation['via']}. Cells are means over a language's queries. A language's "
        "p-value is a two-sided paired t-test against `dense` over its queries, Holm-corrected "
        "over the languages; a macro cell gives Δ dense with the paired tests over question "
        "groups (the translations of one question are one unit)."
    )
    for name, metrics in evaluation["settings"].items():
        lines += ["", f"## Setting `{name}`", ""]
        lines.append(
            f"Queries → passages: {_pairs_line(metrics['pairs'])}. {metrics['judged_queries']} "
            f"of {metrics['queries']} queries scored, {metrics['passages']} passages indexed."
        )
        for measure in metrics["measures"]:
            lines += ["", f"### {display_name(measure)}", ""]
            lines.append(language_table(metrics["strategies"], measure, markdown=True))
        lines += ["", unit_line(metrics["strategies"])]
    return "\n".join(lines) + "\n"
