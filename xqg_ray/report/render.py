"""The research-question report: what each strategy costs and buys, from the measured files only.

    python -m xqg_ray.report.render --root runs/demo --experiment demo

Reads the build's `stats/*.json` and, under `results/<experiment>/`, the evaluation
(`evaluation.json`, test queries only when a dev split exists), the dev tuning (`xqg_tuning.json`),
the cost probes (`cost.json`: real architectures, random weights), the query-time probes
(`latency.json`, `service.json`) and the sweeps (`sweep/*.json`). It writes `report.md`, which
opens with the answer in sentences built from those figures and the caveats they rest on
(`caveats.py`), PNG plots and `report.json`. Whatever was not measured is written as "not
measured"; the corpus-scale costs are extrapolated from measured rates and say so.
"""

from __future__ import annotations

import argparse
from typing import Any

from xqg_ray.config import STRATEGIES
from xqg_ray.evaluate.figures import png_bytes
from xqg_ray.evaluate.tables import display_name, headline, language_table
from xqg_ray.paths import RunPaths
from xqg_ray.report import answer, caveats, literature
from xqg_ray.storage import (
    exists,
    join,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

NOT_MEASURED = answer.NOT_MEASURED
# The build stages whose seconds a strategy's index costs (docs/architecture.md): generation, then
# everything that encodes or mixes vectors for it.
COST_STAGES = {
    "dense": {"generation": [], "encoding": ["encode-passages"]},
    "xqg": {
        "generation": ["generate"],
        "encoding": ["encode-passages", "encode-generated", "augment-xqg"],
    },
    "expand": {"generation": ["generate"], "encoding": ["augment-expand"]},
    "multivector": {
        "generation": ["generate"],
        "encoding": ["encode-passages", "encode-generated", "augment-multivector"],
    },
}
SWEEP_NAMES = ("generation", "encoding", "index", "search", "scaling")


# --- inputs -------------------------------------------------------------------------------------


def read_stats(root: str) -> dict[str, dict[str, Any]]:
    """`stats/<stage>.json` of every stage that has one, and `index` (stats/index.json)."""
    paths = RunPaths(root)
    stages = ["generate", "encode-passages", "encode-queries", "encode-generated"]
    stages += [f"augment-{s}" for s in COST_STAGES if s != "dense"] + ["index"]
    return {s: read_json(paths.stats(s)) for s in stages if exists(paths.stats(s))}


def read_sweeps(results: str) -> dict[str, dict[str, Any]]:
    return {
        name: read_json(join(results, "sweep", f"{name}.json"))
        for name in SWEEP_NAMES
        if exists(join(results, "sweep", f"{name}.json"))
    }


# --- the summary ----------------------------------------------------------------------------------


def per_thousand(stats: dict[str, Any], stages: list[str], passages: int | None) -> float | None:
    """Seconds per 1,000 passages spent in `stages`; None when one of them was not recorded. A
    stage fused into another (xqg mixed inside the encoder actors) is already in that one's."""
    if passages is None or any(stage not in stats for stage in stages):
        return None
    seconds = [stats[s].get("seconds", 0.0) for s in stages if not stats[s].get("fused_into")]
    return 1000 * sum(seconds) / passages


def latency_summary(rows: list[dict[str, Any]], strategy: str) -> dict[str, Any]:
    """Service p50/p99 at the smallest shards, replicas and concurrency measured, the peak QPS
    over the whole grid, and in-process p50/p99 at the smallest shard count."""
    mine = [r for r in rows if r["strategy"] == strategy]
    out: dict[str, Any] = {}
    service = [r for r in mine if r["mode"] == "service"]
    if service:
        first = min(service, key=lambda r: (r["shards"], r["replicas"], r["concurrency"]))
        out |= {
            "service_p50_ms": first["p50_ms"],
            "service_p99_ms": first["p99_ms"],
            "service_point": {k: first[k] for k in ("shards", "replicas", "concurrency")},
            "service_peak_qps": max(r["qps"] for r in service),
        }
    local = [r for r in mine if r["mode"] == "in-process"]
    if local:
        first = min(local, key=lambda r: r["shards"])
        out |= {
            "in_process_p50_ms": first["p50_ms"],
            "in_process_p99_ms": first["p99_ms"],
            "in_process_qps": first["qps"],
        }
    return out


def effectiveness(evaluation: dict[str, Any], strategy: str) -> dict[str, Any]:
    """Macro value of every measure, its difference from dense and the paired t-test p-value."""
    summary = evaluation["strategies"].get(strategy)
    if summary is None:
        return {}
    dense = evaluation["strategies"].get("dense")
    return effect_of(summary, dense, evaluation["measures"])


def effect_of(
    summary: dict[str, Any], dense: dict[str, Any] | None, measures: list[str]
) -> dict[str, Any]:
    """Headline value (cross-lingual macro where it exists), Δ dense and p, per measure."""
    values, tests, _ = headline(summary)
    out = {}
    for measure in measures:
        test = tests.get(measure)
        out[measure] = {
            "value": values[measure],
            "delta_vs_dense": None
            if dense is None
            else values[measure] - headline(dense)[0][measure],
            "p": None if test is None else test["p"],
        }
    return out


def summarize(
    stats: dict[str, Any], evaluation: dict[str, Any] | None, sweeps: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """One row per strategy: index-time cost, index size, latency, effectiveness (None = not
    measured)."""
    passages = stats.get("encode-passages", {}).get("rows_in")
    index = stats.get("index", {})
    found = set(index) or set((evaluation or {}).get("strategies", {}))
    strategies = [s for s in STRATEGIES if s in found]  # JSON files keep their keys sorted
    search_rows = sweeps.get("search", {}).get("rows", [])
    rows = {}
    for strategy in strategies:
        cost = COST_STAGES[strategy]
        generation = per_thousand(stats, cost["generation"], passages)
        encoding = per_thousand(stats, cost["encoding"], passages)
        built = index.get(strategy, {})
        rows[strategy] = {
            "passages": passages,
            "generation_s_per_1k": generation,
            "encoding_s_per_1k": encoding,
            "index_time_s_per_1k": None
            if generation is None or encoding is None
            else generation + encoding,
            "index_build_s": built.get("seconds"),
            "index_entries": built.get("entries"),
            "index_bytes": built.get("bytes"),
            "index_shards": built.get("shards"),
            **latency_summary(search_rows, strategy),
            "effectiveness": effectiveness(evaluation, strategy) if evaluation else {},
        }
    return rows


def fmt(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return NOT_MEASURED
    return format(value, spec)


def effect_cell(effect: dict[str, Any] | None) -> str:
    if not effect:
        return NOT_MEASURED
    text = f"{effect['value']:.3f}"
    if effect["delta_vs_dense"] is not None and effect["p"] is not None:
        text += f" ({effect['delta_vs_dense']:+.3f}, p={effect['p']:.3g})"
    return text


def summary_table(rows: dict[str, dict[str, Any]], measures: list[str]) -> str:
    header = [
        "strategy",
        "generation s / 1k passages",
        "encoding s / 1k passages",
        "index build s",
        "index entries",
        "index bytes",
        *([f"{display_name(m)} (Δ dense, p)" for m in measures] or ["effectiveness"]),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for strategy, row in rows.items():
        cells = [
            f"`{strategy}`",
            fmt(row["generation_s_per_1k"], ".3f"),
            fmt(row["encoding_s_per_1k"], ".3f"),
            fmt(row["index_build_s"], ".3f"),
            fmt(row["index_entries"], "d"),
            fmt(row["index_bytes"], "d"),
            *([effect_cell(row["effectiveness"].get(m)) for m in measures] or [NOT_MEASURED]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- plots ----------------------------------------------------------------------------------------


def _figure(width: float = 6.0, height: float = 3.6, ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width, height), squeeze=False)
    return plt, fig, axes[0]


def _png(plt, fig) -> bytes:
    return png_bytes(fig)


def plot_generation(rows: list[dict[str, Any]]) -> bytes:
    axes_names = list(dict.fromkeys(r["axis"] for r in rows))
    plt, fig, axes = _figure(3.2 * len(axes_names), 3.4, len(axes_names))
    for ax, axis in zip(axes, axes_names, strict=True):
        mine = sorted((r for r in rows if r["axis"] == axis), key=lambda r: r["value"])
        ax.plot([r["value"] for r in mine], [r["passages_per_second"] for r in mine], "o-")
        ax.set_xticks([r["value"] for r in mine])
        ax.set_xlabel(axis.replace("_", " "))
        ax.set_ylabel("passages/s", color="C0")
        twin = ax.twinx()
        twin.plot([r["value"] for r in mine], [r["tokens_per_second"] for r in mine], "s--", c="C1")
        twin.set_ylabel("generated tokens/s", color="C1")
    fig.suptitle("generation throughput", fontsize=10)
    return _png(plt, fig)


def plot_encoding(rows: list[dict[str, Any]]) -> bytes:
    plt, fig, (ax,) = _figure()
    for batch in sorted({r["batch_size"] for r in rows}):
        mine = sorted((r for r in rows if r["batch_size"] == batch), key=lambda r: r["max_length"])
        x = [r["max_length"] for r in mine]
        ax.plot(x, [r["passages_per_second"] for r in mine], "o-", label=f"batch {batch}")
    ax.set_xlabel("passage max length (tokens)")
    ax.set_ylabel("passages/s")
    ax.set_title("encoding throughput", fontsize=10)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def plot_search(rows: list[dict[str, Any]]) -> bytes:
    plt, fig, (ax,) = _figure()
    service = [r for r in rows if r["mode"] == "service"]
    if service:
        for strategy in dict.fromkeys(r["strategy"] for r in service):
            mine = [r for r in service if r["strategy"] == strategy]
            shards = min(r["shards"] for r in mine)
            replicas = min(r["replicas"] for r in mine)
            mine = sorted(
                (r for r in mine if r["shards"] == shards and r["replicas"] == replicas),
                key=lambda r: r["concurrency"],
            )
            x = [r["concurrency"] for r in mine]
            ax.plot(x, [r["p50_ms"] for r in mine], "o-", label=f"{strategy} p50")
            ax.plot(x, [r["p99_ms"] for r in mine], "x:", label=f"{strategy} p99")
        ax.set_xticks(sorted({r["concurrency"] for r in service}))
        ax.set_xlabel("concurrent requests")
        ax.set_title("search service latency (fewest shards and replicas)", fontsize=10)
    else:
        local = [r for r in rows if r["mode"] == "in-process"]
        labels = [f"{r['strategy']}\n{r['shards']} shard(s)" for r in local]
        ax.bar(labels, [r["p50_ms"] for r in local], label="p50")
        ax.plot(labels, [r["p99_ms"] for r in local], "kx", label="p99")
        ax.set_title("in-process FAISS latency per strategy", fontsize=10)
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=7)
    return _png(plt, fig)


def plot_scaling(rows: list[dict[str, Any]]) -> bytes:
    plt, fig, (ax,) = _figure()
    rows = sorted(rows, key=lambda r: r["actors"])
    x = [r["actors"] for r in rows]
    ax.plot(x, [r["passages_per_second"] for r in rows], "o-", label="whole build")
    for key in dict.fromkeys(k for r in rows for k in r if k.endswith("passages_per_second")):
        if key != "passages_per_second" and key.startswith(("generate", "encode-passages")):
            ax.plot(x, [r.get(key) for r in rows], "s--", label=key.split("_")[0])
    ax.set_xlabel("actors per stage")
    ax.set_ylabel("passages/s")
    ax.set_xticks(x)
    ax.set_title("scaling with actors", fontsize=10)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def plot_effectiveness(evaluation: dict[str, Any]) -> bytes:
    measure = evaluation["measures"][0]
    strategies = list(evaluation["strategies"])
    langs = sorted({lang for s in evaluation["strategies"].values() for lang in s["per_lang"]})
    plt, fig, (ax,) = _figure(max(6.0, 0.6 * len(langs) * len(strategies) / 2), 3.6)
    width = 0.8 / len(strategies)
    for i, strategy in enumerate(strategies):
        per_lang = evaluation["strategies"][strategy]["per_lang"]
        values = [per_lang.get(lang, {}).get(measure, 0.0) for lang in langs]
        ax.bar([j + i * width for j in range(len(langs))], values, width, label=strategy)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(langs))], langs)
    ax.set_ylabel(display_name(measure))
    ax.set_title(f"{display_name(measure)} per query language and strategy", fontsize=10)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def plot_index_cost(rows: dict[str, dict[str, Any]]) -> bytes | None:
    measured = {s: r for s, r in rows.items() if r["index_time_s_per_1k"] is not None}
    if not measured:
        return None
    plt, fig, (ax,) = _figure()
    names = list(measured)
    generation = [measured[s]["generation_s_per_1k"] for s in names]
    ax.bar(names, generation, label="generation")
    ax.bar(
        names,
        [measured[s]["encoding_s_per_1k"] for s in names],
        bottom=generation,
        label="encoding + mixing",
    )
    ax.set_ylabel("seconds per 1,000 passages")
    ax.set_title("index-time cost per strategy", fontsize=10)
    ax.legend(fontsize=8)
    return _png(plt, fig)


# --- the report -----------------------------------------------------------------------------------


def _load(values: list[float] | None) -> str:
    return "unknown" if not values else " / ".join(f"{v:.1f}" for v in values)


def _sweep_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "–"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


SWEEP_COLUMNS = {
    "generation": [
        "axis",
        "value",
        "batch_size",
        "actors",
        "queries_per_language",
        "languages",
        "passages",
        "generated_tokens",
        "seconds",
        "passages_per_second",
        "tokens_per_second",
    ],
    "encoding": ["max_length", "batch_size", "passages", "seconds", "passages_per_second"],
    "index": ["strategy", "entries", "shards", "bytes", "seconds"],
    "search": [
        "strategy",
        "mode",
        "shards",
        "replicas",
        "concurrency",
        "entries",
        "requests",
        "p50_ms",
        "p99_ms",
        "qps",
    ],
    "scaling": ["actors", "passages", "build_seconds", "passages_per_second"],
}
SWEEP_PLOTS = {
    "generation": plot_generation,
    "encoding": plot_encoding,
    "search": plot_search,
    "scaling": plot_scaling,
}


def _optional(results: str, name: str) -> dict[str, Any] | None:
    url = join(results, name)
    return read_json(url) if exists(url) else None


def _frontier_section(results: str) -> list[str]:
    """The frontier's two lines and the sensitivity table, when they were computed."""
    from xqg_ray.evaluate import frontier, sensitivity

    grid, degraded = _optional(results, "frontier.json"), _optional(results, "sensitivity.json")
    if not grid or not degraded:
        return []
    return [
        "## Effectiveness against cost, and generator quality",
        "",
        f"{grid['label']}. Each point re-mixes the stored per-query vectors (n per language x "
        f"generated languages; {grid['language_rule']}); reduce and alpha chosen on dev per "
        "point; cost: the cost probe's rates, linear in queries.",
        "",
        *[f"- {line}" for line in frontier.lines(grid)],
        "",
        "![frontier](frontier.png)",
        "",
        "```",
        *sensitivity.table(degraded),
        "```",
        "",
        "![sensitivity](sensitivity.png)",
        "",
    ]


def _tuning_section(tuning: dict[str, Any]) -> list[str]:
    chosen, published = tuning["chosen"], tuning["published"]
    q = tuning["queries_per_passage"]
    measure = display_name(tuning["measure"])
    header = ["reduce", *[f"{a:g}" for a in sorted({r["alpha"] for r in tuning["grid"]})]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    dense = next(r[tuning["measure"]] for r in tuning["grid"] if r["alpha"] == 0.0)
    for reduce in dict.fromkeys(r["reduce"] for r in tuning["grid"]):
        values = {r["alpha"]: r[tuning["measure"]] for r in tuning["grid"] if r["reduce"] == reduce}
        values.setdefault(0.0, dense)
        lines.append(
            "| " + " | ".join([reduce, *[f"{values[a]:.3f}" for a in sorted(values)]]) + " |"
        )
    return [
        "## xqg settings chosen on dev",
        "",
        f"{measure} on {tuning['dev_queries']} dev queries (alpha 0 is dense); the choice, "
        f"{chosen['reduce']} at alpha {chosen['alpha']:g} (dev {chosen['dev_value']:.3f}), is "
        f"then scored once on {tuning['test_queries']} test queries. The published setting is "
        f"{published['reduce']} at alpha {published['alpha']:g}. Generated queries per passage: "
        f"{q['min']} to {q['max']} (median {q['median']:g}), "
        f"passages with none: {q['passages_without_queries']}.",
        "",
        *lines,
        "",
        "![xqg tuning on dev](xqg_tuning.png)",
        "",
    ]


def write_report(root: str, experiment: str) -> str:
    """Write `<root>/results/<experiment>/report.md` (+ PNGs and report.json); returns its URL."""
    results = RunPaths(root).results(experiment)
    stats = read_stats(root)
    evaluation = _optional(results, "evaluation.json")
    tuning = _optional(results, "xqg_tuning.json")
    cost = _optional(results, "cost.json")
    latency = _optional(results, "latency.json")
    service = _optional(results, "service.json")
    sweeps = read_sweeps(results)
    rows = summarize(stats, evaluation, sweeps)
    measures = evaluation["measures"] if evaluation else []
    table = answer.variants(evaluation, tuning, cost, latency)
    lines = [
        f"# Report: {experiment}",
        "",
        "What does query augmentation (`xqg`) cost and buy against passage expansion (`expand`), "
        "multi-vector indexing (`multivector`) and the `dense` baseline?",
        "",
        "## Answer",
        "",
        *answer.sentences(table, evaluation, tuning, cost, latency),
        "",
    ]
    lines += [
        "Caveats:",
        "",
        *caveats.caveats(stats, evaluation, tuning, cost, latency),
        "",
        f"Every figure is read from the measured files under `{root}`"
        + (
            f"; the sentences quote {answer.primary_encoder(cost, evaluation)}'s costs"
            if cost
            else ""
        )
        + "; figures at the corpus scale are extrapolated from measured rates and say from what; "
        "a figure whose input is missing is marked as such.",
    ]
    plots: dict[str, bytes | None] = {"index_cost": plot_index_cost(rows)}
    if evaluation:
        plots["deltas"] = answer.plot_deltas(table, measures[0])
        if plots["deltas"]:
            lines += ["", "![differences from dense with their CIs](deltas.png)"]
    if evaluation and cost:
        plots["tradeoff"] = answer.plot_tradeoff(
            table, measures[0], cost, answer.primary_encoder(cost, evaluation)
        )
        lines += ["", "![effectiveness against indexing cost](tradeoff.png)"]
    lines += ["", "## Effectiveness on test", "", answer.effect_table(table, measures), ""]
    lines += literature.xquad_r_section(table, evaluation)
    if cost:
        lines += ["## Indexing cost (real architectures, random weights)", ""]
        primary = answer.primary_encoder(cost, evaluation)
        lines += [answer.cost_table(cost, primary), "", *answer.cost_notes(cost), ""]
    if latency:
        lines += ["## Query-time cost", "", answer.query_table(latency, service), ""]
        lines += [*answer.query_notes(latency, service), ""]
    if tuning:
        lines += _tuning_section(tuning)
    lines += _frontier_section(results)
    lines += ["## This run's own build", ""]
    passages = next(iter(rows.values()), {}).get("passages")
    lines += [
        f"Stage seconds per 1,000 of the run's {passages} passages, as the build measured them "
        f"with its own generator `{(evaluation or {}).get('generator')}` and encoder "
        f"`{(evaluation or {}).get('encoder')}`"
        + (f" on {(latency or cost)['hardware']}" if latency or cost else "")
        + " (a stand-in's generation is a lookup: see the indexing-cost section for mT5's).",
        "",
        summary_table(rows, measures),
        "",
        "Engines of this build: "
        + "; ".join(
            f"{stage} `{stats[stage]['engine']}`"
            for stage in ("generate", "encode-passages", "encode-generated")
            if stats.get(stage, {}).get("engine")
        )
        + ".",
        "",
    ]
    if plots["index_cost"]:
        lines += ["![this build's index-time cost](index_cost.png)", ""]
    if evaluation:
        plots["effectiveness"] = plot_effectiveness(evaluation)
        lines += [
            "## Effectiveness per query language",
            "",
            "A language's p-value is a two-sided paired t-test against dense over its queries, "
            "Holm-corrected over the languages of one measure and strategy; a macro cell gives "
            "Δ dense with its CI and p over question groups (see the caveats).",
            "",
        ]
        for measure in measures:
            lines += [f"### {display_name(measure)}", ""]
            lines += [language_table(evaluation["strategies"], measure, markdown=True), ""]
        lines += ["![effectiveness](effectiveness.png)", ""]
    lines += ["## Sweeps", ""]
    for name in SWEEP_NAMES:
        lines += [f"### {name}", ""]
        sweep = sweeps.get(name)
        if sweep is None or not sweep["rows"]:
            lines += [f"{NOT_MEASURED} (no `sweep/{name}.json`; run `jobs/sweep.py`).", ""]
            continue
        lines += [_sweep_table(sweep["rows"], SWEEP_COLUMNS[name]), ""]
        if name in SWEEP_PLOTS:
            plots[name] = SWEEP_PLOTS[name](sweep["rows"])
            lines += [f"![{name}]({name}.png)", ""]
        models = sweep.get("settings", {}).get("models_used")
        if models:
            lines += [
                f"Synthetic corpus builds with generator `{models['mt5']}` and encoder "
                f"`{models['bert']}` (not necessarily the run's own models).",
                "",
            ]
        sweep_machine = sweep.get("machine", {})
        lines += [
            f"Measured on {sweep_machine.get('processor')}, {sweep_machine.get('cpu_count')} "
            f"CPUs, load average {_load(sweep_machine.get('load_average'))}.",
            "",
        ]
    for name, png in plots.items():
        if png:
            write_bytes_atomic(join(results, f"{name}.png"), png)
    write_json_atomic(
        join(results, "report.json"),
        {"experiment": experiment, "summary": rows, "variants": table},
    )
    url = join(results, "report.md")
    write_text_atomic(url, "\n".join(lines))
    return url


def opening(report_url: str) -> str:
    """The report's answer section, as the CLI prints it."""
    from xqg_ray.storage import read_text

    text = read_text(report_url)
    return text.split("## Answer", 1)[1].split("\n## ", 1)[0].split("![", 1)[0].strip()


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="The run root (path or URL).")
    parser.add_argument("--experiment", required=True, help="results/<experiment>/")
    args = parser.parse_args(argv)
    url = write_report(args.root, args.experiment)
    print(f"report: {url}")
    return url


if __name__ == "__main__":
    main()
