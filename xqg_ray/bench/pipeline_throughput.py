"""Pipeline throughput: the same build run in one process and on Ray Data, stage by stage.

A synthetic corpus of N passages (sentences sampled deterministically from the XQuAD contexts,
written as a `generic` Parquet corpus with a few queries and qrels) goes through
ingest -> plan -> generate -> encode -> augment -> index several times, on separate run roots and
with the same CPU budget: once with `ray.enabled: false` (the batch functions in a loop in this
process, torch on `--cpus` threads) and once per Ray layout on a local `ray.init(num_cpus=--cpus)`.
A layout `AxT` gives every generate/encode stage A actors x T torch threads; `AxT:AxT` sets the
generate and the encode pools apart. `1x2` runs exactly the local plan (one process, two threads)
and so isolates Ray's overhead; `2x1:1x2` is the tuned default: the long generate stage on two
single-thread actors (data parallelism, which small models use better than intra-op threads),
the short encode stages on one actor (one actor start-up per stage instead of two).

Per-stage figures come from each run root's `stats/*.json`; the one-off Ray start-up (init and a
first trivial Dataset) is timed and reported apart. "ray s outside tasks" is a stage's wall time
not spent in part tasks: actor start-up (a new process importing torch and loading the model),
scheduling and the tail of an uneven pool.

The models are tiny random-weight test models built offline (`xqg_ray.testing.tiny`): the figures
show the framework's overhead, not the speed of mT5 or mBERT.

    python -m xqg_ray.bench.pipeline_throughput --passages 10000 --out results.json --cpus 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from xqg_ray.bench.builds import (
    BuildSettings,
    Layout,
    bench_config,
    local_layout,
    ray_layout,
    stage_actors,
    stage_stats,
    stage_units,
    start_local_ray,
)
from xqg_ray.bench.harness import format_table, machine_info, write_results
from xqg_ray.bench.synthetic import synthetic_corpus
from xqg_ray.config import STRATEGIES
from xqg_ray.stages.pipeline import build

TINY_MODELS_NOTE = (
    "Models are tiny random-weight test models (xqg_ray.testing.tiny): the figures show "
    "framework overhead (Ray Data vs a single-process loop), not model speed."
)
LAYOUTS_NOTE = (
    "Every layout has the same CPU budget. ray-1x2 runs the local plan (one process, torch on "
    "two threads) on Ray, so its overhead is Ray's alone; ray-2x1:1x2 (the tuned default) "
    "generates on two single-thread actors and encodes on one two-thread actor; a plain 2x1 "
    "pays two actor start-ups in every short encode stage. 'ray s outside tasks' = stage wall "
    "time not spent in part tasks (actor process start, torch/transformers import, model load, "
    "scheduling, uneven tail)."
)
TARGET_MAX_OVERHEAD = 0.20  # issue #3 item 7: Ray overhead at most 20% on 2 CPUs


# --- running and reading the stats --------------------------------------------------------------


def run_layout(
    lay: Layout, workdir: Path, corpus: dict[str, str], models: dict, settings: BuildSettings
) -> dict[str, Any]:
    """One build on a fresh run root; returns its stage stats, wall time and Ray start-up."""
    root = str(workdir / lay.name)
    cfg = bench_config(root, corpus, models, settings, lay)
    load_before = list(os.getloadavg())
    startup = start_local_ray(settings.cpus) if lay.ray else None
    try:
        start = time.perf_counter()
        build(cfg)
        wall = time.perf_counter() - start
    finally:
        if lay.ray:
            import ray

            ray.shutdown()
    return {
        "layout": asdict(lay),
        "load_average_before": load_before,
        "ray_startup_seconds": startup,
        "build_seconds": wall,
        "stages": stage_stats(root),
    }


# --- comparison ---------------------------------------------------------------------------------


def outside_task_seconds(stats: dict[str, Any], workers: int) -> float | None:
    """Stage wall time not spent inside part tasks (model loads, actor start, scheduling, tail)."""
    if "task_seconds" not in stats:
        return None
    return stats["seconds"] - stats["task_seconds"] / max(1, workers)


def compare(local: dict[str, Any], ray_run: dict[str, Any], passages: int) -> list[dict[str, Any]]:
    """Per-stage rates local vs Ray, ratio and overhead (1 - ray/local), plus a total row."""
    rows = []
    for stage, local_stats in local["stages"].items():
        ray_stats = ray_run["stages"].get(stage)
        if ray_stats is None:
            continue
        unit, count = stage_units(stage, local_stats, passages)
        actors = stage_actors(stage, ray_run["layout"])
        workers = min(actors, ray_stats.get("parts_computed", 1))
        rows.append(
            _rate_row(stage, unit, count, local_stats["seconds"], ray_stats["seconds"])
            | {
                "local_outside_tasks_seconds": outside_task_seconds(local_stats, 1),
                "ray_outside_tasks_seconds": outside_task_seconds(ray_stats, workers),
            }
        )
    total = _rate_row(
        "total (stages + index)",
        "passages",
        passages,
        sum(row["local_seconds"] for row in rows),
        sum(row["ray_seconds"] for row in rows),
    )
    for side in ("local", "ray"):
        key = f"{side}_outside_tasks_seconds"
        total[key] = sum(row[key] for row in rows if row[key] is not None)
    return [*rows, total]


def _rate_row(stage: str, unit: str, count: int, local_s: float, ray_s: float) -> dict[str, Any]:
    local_rate, ray_rate = count / local_s, count / ray_s
    return {
        "stage": stage,
        "unit": unit,
        "count": count,
        "local_seconds": local_s,
        "ray_seconds": ray_s,
        "local_per_second": local_rate,
        "ray_per_second": ray_rate,
        "ratio": ray_rate / local_rate,
        "ray_overhead": 1 - ray_rate / local_rate,
    }


def local_table(run: dict[str, Any], passages: int) -> str:
    rows = []
    for stage, stats in run["stages"].items():
        unit, count = stage_units(stage, stats, passages)
        rows.append([stage, unit, count, stats["seconds"], count / stats["seconds"]])
    return format_table(["stage", "unit", "count", "local s", "local /s"], rows)


def comparison_table(name: str, rows: list[dict[str, Any]]) -> str:
    headers = [
        "stage",
        "unit",
        "local s",
        f"{name} s",
        "local /s",
        "ray /s",
        "ray/local",
        "overhead %",
        "ray s outside tasks",
    ]
    body = [
        [
            r["stage"],
            r["unit"],
            r["local_seconds"],
            r["ray_seconds"],
            r["local_per_second"],
            r["ray_per_second"],
            r["ratio"],
            100 * r["ray_overhead"],
            r.get("ray_outside_tasks_seconds"),
        ]
        for r in rows
    ]
    return format_table(headers, body)


def build_settings(args: argparse.Namespace) -> BuildSettings:
    """The build values among the command-line flags."""
    return BuildSettings(**{f.name: getattr(args, f.name) for f in fields(BuildSettings)})


# --- command line -------------------------------------------------------------------------------


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=10_000, help="Synthetic corpus size.")
    parser.add_argument("--out", required=True, help="Where to write the JSON results.")
    parser.add_argument("--cpus", type=int, default=2, help="CPU budget of every layout.")
    parser.add_argument(
        "--ray-layouts",
        type=_csv,
        default=["1x2", "2x1:1x2"],
        help="Ray layouts, comma separated: ACTORSxTHREADS for every stage, or "
        "GENERATE:ENCODE pools such as 2x1:1x2; empty: the local run only.",
    )
    parser.add_argument(
        "--actor-num-cpus",
        type=float,
        default=0.5,
        help="Logical CPUs each generate/encode actor reserves; below 1 so that Ray Data keeps "
        "CPU slots for its own tasks (a pool on every CPU can stall).",
    )
    parser.add_argument("--passages-per-part", type=int, default=256)
    parser.add_argument("--generate-batch-size", type=int, default=64)
    parser.add_argument("--encode-batch-size", type=int, default=64)
    parser.add_argument("--languages", type=_csv, default=["de", "ar"], help="Generated languages.")
    parser.add_argument("--queries-per-language", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--strategies", type=_csv, default=list(STRATEGIES))
    parser.add_argument("--queries", type=int, default=8, help="Evaluation queries (ingest only).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--xquad-dir", default="", help="XQuAD folder; default: shared or cache.")
    parser.add_argument("--models-dir", default="", help="Tiny model cache; default: xqg cache.")
    parser.add_argument("--workdir", default="", help="Keep run roots here (default: a temp dir).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from xqg_ray.datasets.fetch import cache_root, ensure_dataset
    from xqg_ray.testing.tiny import ensure_tiny_models

    args = parse_args(argv)
    settings = build_settings(args)
    layouts = [local_layout(args.cpus)] + [
        ray_layout(spec, args.actor_num_cpus) for spec in args.ray_layouts
    ]
    xquad_dir = ensure_dataset("xquad", args.xquad_dir or None)
    models = ensure_tiny_models(args.models_dir or cache_root() / "tiny-models", xquad_dir)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="xqg-pipeline-bench-"))
    machine = machine_info()  # before the runs: the local run re-pins this process's threads
    print(TINY_MODELS_NOTE, flush=True)
    try:
        corpus = synthetic_corpus(
            workdir / "corpus", args.passages, xquad_dir, args.queries, args.seed
        )
        runs = {}
        for lay in layouts:
            print(f"running {lay.name} ...", flush=True)
            runs[lay.name] = run_layout(lay, workdir, corpus, models, settings)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    comparisons = {
        name: compare(runs["local"], run, args.passages)
        for name, run in runs.items()
        if name != "local"
    }
    results = {
        "benchmark": "pipeline_throughput",
        "note": TINY_MODELS_NOTE,
        "passages": args.passages,
        "layouts_note": LAYOUTS_NOTE,
        "machine": {**machine, "load_average_after": list(os.getloadavg())},
        "arguments": {k: v for k, v in vars(args).items() if k != "out"},
        "config": json.loads(
            bench_config("<run root>", corpus, models, settings, layouts[0]).model_dump_json()
        ),
        "runs": runs,
        "comparisons": comparisons,
        "target": {
            "max_ray_overhead": TARGET_MAX_OVERHEAD,
            "met": {
                name: rows[-1]["ray_overhead"] <= TARGET_MAX_OVERHEAD
                for name, rows in comparisons.items()
            },
        },
    }
    print(f"\n{TINY_MODELS_NOTE}\n{LAYOUTS_NOTE}")
    print(f"passages: {args.passages}, CPU budget: {args.cpus}")
    print(f"local build: {runs['local']['build_seconds']:.1f} s")
    if not comparisons:
        print(local_table(runs["local"], args.passages))
    for name, rows in comparisons.items():
        startup = runs[name]["ray_startup_seconds"]
        verdict = "met" if results["target"]["met"][name] else "MISSED"
        print(
            f"\n== local vs {name}: target overhead <= {TARGET_MAX_OVERHEAD:.0%} {verdict} "
            f"(build {runs[name]['build_seconds']:.1f} s; Ray start-up, not in the figures: "
            f"init {startup['init']:.1f} s, first dataset {startup['first_dataset']:.1f} s)"
        )
        print(comparison_table(name, rows))
    path = write_results(args.out, results)
    print(f"\nresults: {path}")
    return results


if __name__ == "__main__":
    main()
