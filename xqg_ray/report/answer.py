"""The report's opening answer and evidence tables, built only from measured files.

One row per variant: `dense`, `xqg` at the published setting, `xqg` at the dev-chosen setting,
`expand` and `multivector`. Each carries its indexing cost (cost probe, real architectures with
random weights), its query-time cost (latency probe, service probe) and its effectiveness on the
test queries against dense, with the paired t-test and bootstrap CI over question groups
(`evaluate/paired.py`; evaluation, dev tuning).
"""

from __future__ import annotations

from typing import Any

from xqg_ray.config import STRATEGIES
from xqg_ray.evaluate.figures import png_bytes
from xqg_ray.evaluate.paired import CONFIDENCE, count_text
from xqg_ray.evaluate.tables import delta_text, display_name, headline

NOT_MEASURED = "not measured"
SIGNIFICANCE = 0.05
PUBLISHED, CHOSEN = "xqg (published)", "xqg (dev-chosen)"


def duration(seconds: float) -> str:
    """Seconds as a person reads them: s, min, h or days."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:,.1f} s"


def _effect(summary: dict[str, Any], dense: dict[str, Any], measures: list[str]) -> dict:
    values, tests, label = headline(summary)
    base = headline(dense)[0]
    return {
        m: {
            "value": values[m],
            "delta": values[m] - base[m],
            "p": tests.get(m, {}).get("p"),
            "ci": tests.get(m, {}).get("ci"),
            "n": tests.get(m, {}).get("n"),
            "unit": tests.get(m, {}).get("unit"),
            "over": label,
        }
        for m in measures
    }


def variants(
    evaluation: dict[str, Any] | None,
    tuning: dict[str, Any] | None,
    cost: dict[str, Any] | None,
    latency: dict[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    """name -> {strategy, setting, effect, cost (per encoder), search}; None where unmeasured."""
    measured = set((evaluation or {}).get("strategies", {})) or set(
        (latency or {}).get("search", {})
    )
    strategies = [s for s in STRATEGIES if s in measured]  # JSON files keep keys sorted
    names: dict[str, tuple[str, str]] = {}
    for strategy in strategies:
        if strategy == "xqg":
            names[PUBLISHED] = ("xqg", "published")
            if tuning:
                names[CHOSEN] = ("xqg", "dev-chosen")
        else:
            names[strategy] = (strategy, "")
    measures = (evaluation or {}).get("measures", [])
    dense = (evaluation or {}).get("strategies", {}).get("dense")
    out = {}
    for name, (strategy, setting) in names.items():
        effect = None
        if name == CHOSEN:
            test = tuning["test"]
            effect = _effect(test[CHOSEN], test["dense"], tuning["measures"])
        elif evaluation and dense:
            effect = _effect(evaluation["strategies"][strategy], dense, measures)
        costs = {
            encoder: rows[strategy] for encoder, rows in (cost or {}).get("strategies", {}).items()
        }
        out[name] = {
            "strategy": strategy,
            "setting": setting,
            "effect": effect,
            "cost": costs,
            "search": (latency or {}).get("search", {}).get(strategy),
        }
    return out


def primary_encoder(cost: dict[str, Any] | None, evaluation: dict[str, Any] | None) -> str | None:
    """The encoder whose costs the sentences quote: the one the effectiveness was measured with
    when the cost probe timed it, else the first timed."""
    encoders = list((cost or {}).get("strategies", {}))
    own = (evaluation or {}).get("encoder")
    return own if own in encoders else next(iter(encoders), None)


def ratio(value: float) -> str:
    return f"{value:.3g}x"


def setting_text(name: str, evaluation: dict, tuning: dict | None) -> str:
    if name == PUBLISHED:
        aug = evaluation["config"]["augment"]
        return f" at the published setting ({aug['reduce']}, alpha {aug['alpha']:g})"
    if name == CHOSEN and tuning:
        chosen, published = tuning["chosen"], tuning["published"]
        same = (chosen["reduce"], chosen["alpha"]) == (published["reduce"], published["alpha"])
        return (
            f" at the dev-chosen setting ({chosen['reduce']}, alpha {chosen['alpha']:g}, chosen "
            f"on {tuning['dev_queries']} dev queries"
            + ("; the published setting itself" if same else "")
            + "; scored by exact re-mixing)"
        )
    return ""


def sentences(
    rows: dict[str, dict[str, Any]],
    evaluation: dict[str, Any] | None,
    tuning: dict[str, Any] | None,
    cost: dict[str, Any] | None,
    latency: dict[str, Any] | None,
) -> list[str]:
    """One sentence per variant against dense: indexing cost as a multiple of dense, query
    latency difference with its noise band, effectiveness delta on test with its p-value."""
    dense = rows.get("dense")
    if dense is None:
        return ["No `dense` baseline in this run: nothing to compare against."]
    measure = (evaluation or {}).get("measures", [None])[0]
    encoder = primary_encoder(cost, evaluation)
    target = (cost or {}).get("target_passages")
    lines = []
    for name, row in rows.items():
        if name == "dense":
            continue
        parts = []
        if encoder:
            mine, base = row["cost"][encoder], dense["cost"][encoder]
            parts.append(
                f"indexing costs {ratio(mine['x_dense'])} dense ({mine['seconds_per_1k']:,.0f} s "
                f"vs {base['seconds_per_1k']:,.1f} s per 1,000 passages at this run's shape; "
                f"{mine['dominant']} is {mine['dominant_share']:.0%} of it; extrapolated from "
                f"the rates timed on this machine to {target:,} passages: "
                f"{duration(mine['seconds_at_target'])} at the run's shape, "
                f"{duration(mine['paper_shape']['seconds_at_target'])} at the paper's)"
            )
        else:
            parts.append(f"indexing cost {NOT_MEASURED}")
        if row["search"] and dense["search"]:
            mine, base = row["search"]["single"]["p50_ms"], dense["search"]["single"]["p50_ms"]
            noise = max(row["search"]["noise_ms"], dense["search"]["noise_ms"])
            verdict = "within" if abs(mine - base) <= noise else "outside"
            parts.append(
                f"query latency {mine - base:+.3f} ms against dense's {base:.3f} ms in-process "
                f"search p50 ({verdict} the noise band of ±{noise:.3f} ms; "
                f"{ratio(row['search']['qps_x_dense'])} dense's QPS in batches of 32)"
            )
        else:
            parts.append(f"query latency {NOT_MEASURED}")
        effect = (row["effect"] or {}).get(measure) if measure else None
        if effect and effect["p"] is not None:
            verdict = "significant" if effect["p"] < SIGNIFICANCE else "not significant"
            low, high = effect.get("ci") or (None, None)
            ci = f", {CONFIDENCE:.0%} CI [{low:+.3f}, {high:+.3f}]" if low is not None else ""
            units = f" over {count_text(effect)}" if effect.get("unit") else ""
            parts.append(
                f"{display_name(measure)} on test ({effect['over']}) {effect['value']:.3f}, "
                f"Δ {effect['delta']:+.3f} vs dense{ci}, paired t-test p={effect['p']:.2g}"
                f"{units} ({verdict})"
            )
        else:
            parts.append(f"effectiveness vs dense {NOT_MEASURED}")
        text = setting_text(name, evaluation, tuning) if evaluation else ""
        lines.append(f"- **`{row['strategy']}`**{text}: " + "; ".join(parts) + ".")
    return lines + [verdict_line(rows, measure)]


def verdict_line(rows: dict[str, dict[str, Any]], measure: str | None) -> str:
    """Which variants beat dense significantly on the headline measure, and the largest gain."""
    effects = {
        name: row["effect"][measure]
        for name, row in rows.items()
        if name != "dense" and row["effect"] and measure in row["effect"]
    }
    if not effects:
        return f"- Effectiveness against dense: {NOT_MEASURED}."
    winners = [
        name
        for name, e in effects.items()
        if e["delta"] > 0 and e["p"] is not None and e["p"] < SIGNIFICANCE
    ]
    best = max(effects, key=lambda name: effects[name]["delta"])
    effect = effects[best]
    gain = f"({delta_text(effect['delta'], effect)})"
    if winners:
        named = ", ".join(f"`{name}`" for name in winners)
        return (
            f"- Overall on {display_name(measure)}: {named} beat dense significantly; the "
            f"largest gain is `{best}`'s {gain}. The others do not."
            if len(winners) < len(effects)
            else f"- Overall on {display_name(measure)}: every variant beats dense significantly;"
            f" the largest gain is `{best}`'s {gain}."
        )
    if effect["delta"] > 0:
        return (
            f"- Overall on {display_name(measure)}: `{best}` comes out ahead of dense {gain}, "
            "but not significantly; no variant beats dense significantly."
        )
    return (
        f"- Overall on {display_name(measure)}: no variant beats dense; `{best}` comes closest "
        f"{gain}."
    )


def extrapolation(cost: dict[str, Any]) -> str:
    """What the corpus-scale figures are extrapolated from."""
    run, paper = cost["generation"]["run"], cost["generation"]["paper"]
    return (
        f"extrapolated from the per-passage rates timed here ({run['passage_languages_timed']} "
        f"and {paper['passage_languages_timed']} passage-languages of generation at the run's "
        "and the paper's shape; the encoders' rates on the run's passages)"
    )


def cost_table(cost: dict[str, Any], primary: str | None = None) -> str:
    """Indexing cost per strategy and encoder: s per 1,000 passages and x dense at the run's
    shape; at the target size, extrapolated at the run's and at the paper's shape."""
    encoders = sorted(cost["strategies"], key=lambda name: name != primary)
    target = f"at {cost['target_passages']:,}"
    header = ["strategy"]
    for encoder in encoders:
        header += [
            f"{encoder}: s / 1k",
            "x dense",
            f"{target}, run's shape*",
            f"{target}, paper's shape*",
            "dominant",
        ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    measured = next(iter(cost["strategies"].values()))
    for strategy in [s for s in STRATEGIES if s in measured]:
        cells = [f"`{strategy}`"]
        for encoder in encoders:
            row = cost["strategies"][encoder][strategy]
            cells += [
                f"{row['seconds_per_1k']:,.1f}",
                f"{row['x_dense']:.1f}",
                duration(row["seconds_at_target"]),
                duration(row["paper_shape"]["seconds_at_target"]),
                f"{row['dominant']} ({row['dominant_share']:.0%})",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", f"\\* The columns marked * are {extrapolation(cost)}."])


def cost_notes(cost: dict[str, Any]) -> list[str]:
    """The generation and encoding rates behind the cost table, the model load and the build's
    per-call translator reload, which the rates leave out."""
    gen = cost["generation"]
    run, paper = gen["run"], gen["paper"]
    lines = [
        f"Generation: {gen['model']}, engine `{gen['engine']}`, top-k {gen['top_k']} sampling, "
        f"outputs fixed at {run['output_tokens']} tokens (the run's generated queries' mean, "
        "EOS included); input lengths are counted in XLM-R's 250k SentencePiece (like mT5's) "
        f"plus EOS, truncated at {run['max_input_length']}, and the model is fed inputs of the "
        "mean length.",
        f"At the run's shape ({run['languages']} languages x {run['queries_per_language']} "
        f"queries over the run's passages of {run['passage_words']:.0f} words on average, inputs "
        f"of {run['input_tokens']:.0f} tokens): {run['seconds_per_passage']:.2f} s per passage "
        f"({run['passage_languages_timed']} passage-languages timed in {run['seconds']:.0f} s).",
        f"At the paper's shape ({paper['languages']} languages x "
        f"{paper['queries_per_language']} queries over {paper['passage_words']:.0f}-word "
        f"passages with the published prompt, inputs of {paper['input_tokens']:.0f} tokens): "
        f"{paper['seconds_per_passage']:.2f} s per passage ({paper['passage_languages_timed']} "
        f"passage-languages timed in {paper['seconds']:.0f} s).",
        f"Model load: {run['load_seconds']:.1f} s, once per generation actor, not in the rates.",
    ]
    reload = gen["translator_reload"]
    if reload:
        lines.append(
            "The build's CTranslate2 generator reloads its translator at every call so that each "
            f"call is seeded (one load per part and language, {reload['seconds_per_load']:.1f} s "
            f"each): at {reload['passages_per_part']} passages per part that adds "
            f"{reload['seconds_per_passage']:.2f} s per passage "
            f"({reload['share_of_generation']:.0%} of the run's shape's generation), which the "
            "rates above leave out."
        )
    for name, enc in cost["encoders"].items():
        lines.append(
            f"Encoder {name} ({enc['weights']}, engine `{enc['engine']}`): "
            f"{1 / enc['passage']['seconds_per_unit']:.1f} passages/s, "
            f"{1 / enc['query']['seconds_per_unit']:.1f} queries/s, "
            f"{1 / enc['expanded']['seconds_per_unit']:.2f} expanded passages/s."
        )
    lines.append(
        f"Generated queries per passage: {cost['queries_per_passage']} at the run's shape, "
        f"{cost['paper_queries_per_passage']} at the paper's; measured on {cost['hardware']}."
    )
    return lines


def query_table(latency: dict[str, Any], service: dict[str, Any] | None) -> str:
    header = [
        "strategy",
        "index entries",
        "search p50 ms (± noise)",
        "search p99 ms",
        "per query in batches of 32, ms",
        "QPS (batches of 32)",
        "p50 x dense",
        "QPS x dense",
        "service p50 / p99 ms (text)",
        "service p50 / p99 ms (vector)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    served = (service or {}).get("strategy")
    for strategy in [s for s in STRATEGIES if s in latency["search"]]:
        row = latency["search"][strategy]
        routes = (service or {}).get("latency", {}) if strategy == served else {}
        cells = [
            f"`{strategy}`",
            f"{row['entries']:,}",
            f"{row['single']['p50_ms']:.3f} (±{row['noise_ms']:.3f})",
            f"{row['single']['p99_ms']:.3f}",
            f"{row['batch32_per_query_ms']:.4f}",
            f"{row['qps_batch32']:,.0f}",
            f"{row.get('p50_x_dense', 1.0):.3g}",
            f"{row.get('qps_x_dense', 1.0):.3g}",
        ]
        for route in ("search", "search_vectors"):
            got = routes.get(route)
            cells.append(f"{got['p50_ms']:.1f} / {got['p99_ms']:.1f}" if got else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def query_notes(latency: dict[str, Any], service: dict[str, Any] | None) -> list[str]:
    enc = latency["encoder"]
    lines = [
        f"Query encoding ({enc['name']}, engine `{enc['engine']}`), the same for every strategy: "
        f"p50 {enc['single']['p50_ms']:.2f} ms, p99 {enc['single']['p99_ms']:.2f} ms one query "
        f"at a time; {enc['batch32_per_query_ms']:.2f} ms per query in batches of 32.",
        f"Search: in-process FAISS ({latency['faiss_threads']} thread), k = {latency['k']}, "
        f"{latency['queries']} test queries x {latency['rounds']} interleaved rounds; the noise "
        "band is half the spread of the per-round medians. Measured on "
        f"{latency['hardware']}.",
    ]
    if service:
        lines.append(
            f"Service: `{service['strategy']}` index behind Ray Serve on loopback, sequential "
            "one-query requests; text requests include the service's own query encoding. "
            f"{service['agree']}/{service['queries']} queries ranked exactly as offline. "
            f"Measured on {service.get('hardware', latency['hardware'])}."
        )
    return lines


def effect_table(rows: dict[str, dict[str, Any]], measures: list[str]) -> str:
    header = [
        "variant",
        *[f"{display_name(m)} (Δ dense [{CONFIDENCE:.0%} CI], p)" for m in measures],
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        cells = [f"`{name}`"]
        for measure in measures:
            effect = (row["effect"] or {}).get(measure)
            if not effect:
                cells.append(NOT_MEASURED)
            elif name == "dense" or effect["p"] is None:
                cells.append(f"{effect['value']:.3f}")
            else:
                cells.append(f"{effect['value']:.3f} ({delta_text(effect['delta'], effect)})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_tradeoff(
    rows: dict[str, dict[str, Any]], measure: str, cost: dict[str, Any], encoder: str
) -> bytes:
    """Effectiveness on test against indexing cost with the encoder effectiveness was measured
    with: one labelled point per variant."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    placed: dict[tuple[float, float], int] = {}
    for i, (name, row) in enumerate(rows.items()):
        effect = (row["effect"] or {}).get(measure)
        if not effect or encoder not in row["cost"]:
            continue
        x, y = row["cost"][encoder]["seconds_per_1k"], effect["value"]
        ax.scatter([x], [y], color=f"C{i}", s=60)
        offset = placed.get((round(x), round(y, 3)), 0)
        placed[(round(x), round(y, 3))] = offset + 1
        ax.annotate(name, (x, y), xytext=(6, 6 - 11 * offset), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(f"indexing cost, s per 1,000 passages, on {cost['hardware']}", fontsize=8)
    ax.set_ylabel(f"{display_name(measure)} on test")
    gen = cost["generation"]
    ax.set_title(f"generation: {gen['model']}, {gen['engine']}; encoder {encoder}", fontsize=7)
    ax.margins(x=0.3, y=0.15)
    return png_bytes(fig)


def plot_deltas(rows: dict[str, dict[str, Any]], measure: str) -> bytes | None:
    """Each variant's difference from dense on test with its bootstrap CI over the tests' units
    (question groups): what the significance verdicts rest on, drawn."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    effects = {
        name: row["effect"][measure]
        for name, row in rows.items()
        if name != "dense" and row["effect"] and (row["effect"].get(measure) or {}).get("ci")
    }
    if not effects:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(effects) + 1.4))
    names = list(effects)[::-1]
    for i, name in enumerate(names):
        effect = effects[name]
        low, high = effect["ci"]
        ax.errorbar(
            effect["delta"],
            i,
            xerr=[[effect["delta"] - low], [high - effect["delta"]]],
            fmt="o",
            color=f"C{i}",
            capsize=4,
        )
    ax.axvline(0.0, color="grey", linestyle="--")
    ax.set_yticks(range(len(names)), names)
    first = next(iter(effects.values()))
    ax.set_xlabel(
        f"Δ {display_name(measure)} vs dense on test, {CONFIDENCE:.0%} CI over {count_text(first)}",
        fontsize=8,
    )
    ax.margins(y=0.3)
    return png_bytes(fig)
