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
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xqg_ray.bench.harness import format_table, machine_info, write_results
from xqg_ray.config import STRATEGIES, RunConfig
from xqg_ray.paths import RunPaths
from xqg_ray.stages.pipeline import build
from xqg_ray.storage import exists, read_json

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
# Sentence ends in the XQuAD scripts (Latin, Cyrillic, Greek, Arabic, Devanagari, CJK); Thai
# has no sentence punctuation and separates sentences (and clauses) with a space.
_SENTENCE_END = re.compile(r"(?<=[.!?;\u0964\u06d4\u3002\uff01\uff1f])\s*")
_SENTENCE_SPLIT = {"th": re.compile(r"\s+")}
_MIN_SENTENCE_CHARS = 20


# --- the synthetic corpus ----------------------------------------------------------------------


def sentence_pool(xquad_dir: str) -> dict[str, list[tuple[str, str]]]:
    """(article title, sentence) pairs of every XQuAD context, per language, in file order."""
    pool: dict[str, list[tuple[str, str]]] = {}
    for file in sorted(Path(xquad_dir).glob("xquad.*.json")):
        lang = file.name.split(".")[1]
        splitter = _SENTENCE_SPLIT.get(lang, _SENTENCE_END)
        sentences = pool.setdefault(lang, [])
        for article in json.loads(file.read_text(encoding="utf-8"))["data"]:
            title = article["title"].replace("_", " ")
            for paragraph in article["paragraphs"]:
                for sentence in splitter.split(paragraph["context"]):
                    if len(sentence.strip()) >= _MIN_SENTENCE_CHARS:
                        sentences.append((title, sentence.strip()))
    if not pool:
        raise FileNotFoundError(f"{xquad_dir}: no xquad.<lang>.json files")
    return pool


def english_questions(xquad_dir: str, count: int) -> list[str]:
    data = json.loads((Path(xquad_dir) / "xquad.en.json").read_text(encoding="utf-8"))["data"]
    questions = [qa["question"] for a in data for p in a["paragraphs"] for qa in p["qas"]]
    return questions[:count]


def synthetic_corpus(
    folder: str | Path, passages: int, xquad_dir: str, queries: int = 8, seed: int = 0
) -> dict[str, str]:
    """Write passages.parquet (2-4 same-language sentences each, languages in turn), queries.jsonl
    and qrels.txt (query i judges passage i) under `folder`; returns the three paths.

    Deterministic for a given seed and XQuAD folder, so every run of the benchmark sees the same
    text and the same token counts.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pool = sentence_pool(xquad_dir)
    languages = sorted(pool)
    rng = np.random.default_rng(seed)
    rows: dict[str, list[str]] = {"pid": [], "lang": [], "title": [], "text": []}
    for number in range(passages):
        lang = languages[number % len(languages)]
        picks = rng.integers(0, len(pool[lang]), size=int(rng.integers(2, 5)))
        rows["pid"].append(f"p{number:07d}")
        rows["lang"].append(lang)
        rows["title"].append(pool[lang][picks[0]][0])
        rows["text"].append(" ".join(pool[lang][i][1] for i in picks))
    paths = {
        "passages": str(folder / "passages.parquet"),
        "queries": str(folder / "queries.jsonl"),
        "qrels": str(folder / "qrels.txt"),
    }
    pq.write_table(pa.table(rows), paths["passages"])
    texts = english_questions(xquad_dir, min(queries, passages))
    with open(paths["queries"], "w", encoding="utf-8") as out:
        for number, text in enumerate(texts):
            out.write(json.dumps({"qid": f"q{number}", "lang": "en", "text": text}) + "\n")
    with open(paths["qrels"], "w", encoding="utf-8") as out:
        for number in range(len(texts)):
            out.write(f"q{number} 0 p{number:07d} 1\n")
    return paths


# --- layouts and configs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """A stage's workers: `actors` Ray actors (or this process) with `threads` torch threads."""

    actors: int
    threads: int


@dataclass(frozen=True)
class Layout:
    """Where the generate and the encode stages run: in this process, or on Ray actor pools."""

    name: str
    ray: bool
    generate: Pool
    encode: Pool
    actor_num_cpus: float  # logical CPUs each actor reserves (threads decide real CPU use)


def local_layout(cpus: int) -> Layout:
    pool = Pool(actors=1, threads=cpus)
    return Layout("local", ray=False, generate=pool, encode=pool, actor_num_cpus=cpus)


def _pool(spec: str, layout: str) -> Pool:
    match = re.fullmatch(r"(\d+)x(\d+)", spec)
    if not match:
        raise ValueError(
            f"Ray layout {layout!r}: expected ACTORSxTHREADS such as 2x1, or GENERATE:ENCODE "
            "such as 2x1:1x2"
        )
    return Pool(actors=int(match[1]), threads=int(match[2]))


def ray_layout(spec: str, actor_num_cpus: float) -> Layout:
    """`AxT` (A actors x T torch threads for every stage) or `AxT:AxT` (generate:encode)."""
    spec = spec.strip()
    generate, split, encode = spec.partition(":")
    generate_pool = _pool(generate, spec)
    encode_pool = _pool(encode, spec) if split else generate_pool
    return Layout(f"ray-{spec}", True, generate_pool, encode_pool, actor_num_cpus)


def stage_actors(stage: str, layout: dict[str, Any]) -> int:
    """Actors a stage's pool had: augment-xqg/multivector always run on one default actor."""
    if stage == "generate":
        return layout["generate"]["actors"]
    if stage.startswith("encode-") or stage == "augment-expand":
        return layout["encode"]["actors"]
    return 1


def bench_config(
    root: str, corpus: dict[str, str], models: dict[str, str], args: argparse.Namespace, lay: Layout
) -> RunConfig:
    """The benchmark's run config: identical for every layout except `ray` and `stages`."""
    stages = {
        name: {"actors": pool.actors, "num_cpus": lay.actor_num_cpus, "threads": pool.threads}
        for name, pool in (("generate", lay.generate), ("encode", lay.encode))
    }
    return RunConfig.model_validate(
        {
            "root": root,
            "dataset": {"name": "generic", **corpus},
            "encoder": {
                "backend": "hf",
                "model": models["bert"],
                "batch_size": args.encode_batch_size,
                "device": "cpu",
            },
            "generator": {
                "backend": "hf",
                "model": models["mt5"],
                "languages": args.languages,
                "queries_per_language": args.queries_per_language,
                "max_new_tokens": args.max_new_tokens,
                "batch_size": args.generate_batch_size,
                "device": "cpu",
            },
            "collection": {"passages_per_part": args.passages_per_part},
            "augment": {"strategies": args.strategies, "expand_max_length": 256},
            "stages": stages,
            "ray": {"enabled": lay.ray, "num_cpus": args.cpus, "progress_bars": False},
        }
    )


# --- running and reading the stats --------------------------------------------------------------


def start_ray(cpus: int) -> dict[str, float]:
    """A fresh local Ray (never a cluster another process started here), and a first trivial
    Dataset: one-off costs, kept out of the stage figures."""
    import ray

    start = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    init = time.perf_counter() - start
    start = time.perf_counter()
    ray.data.range(cpus, override_num_blocks=cpus).map_batches(lambda batch: batch).take_all()
    return {"init": init, "first_dataset": time.perf_counter() - start}


def stage_stats(root: str) -> dict[str, dict[str, Any]]:
    """Each stage's `stats/<stage>.json`, and the index build times from `stats/index.json`."""
    paths = RunPaths(root)
    stats: dict[str, dict[str, Any]] = {}
    for stage in ("generate", "encode-passages", "encode-queries", "encode-generated") + tuple(
        f"augment-{s}" for s in STRATEGIES if s != "dense"
    ):
        if exists(paths.stats(stage)):  # a configuration may skip generation or strategies
            stats[stage] = read_json(paths.stats(stage))
    for strategy, row in read_json(paths.stats("index")).items():
        stats[f"index-{strategy}"] = {"stage": f"index-{strategy}", **row}
    return stats


def run_layout(
    lay: Layout, workdir: Path, corpus: dict[str, str], models: dict, args: argparse.Namespace
) -> dict[str, Any]:
    """One build on a fresh run root; returns its stage stats, wall time and Ray start-up."""
    root = str(workdir / lay.name)
    cfg = bench_config(root, corpus, models, args, lay)
    load_before = list(os.getloadavg())
    startup = start_ray(args.cpus) if lay.ray else None
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


def stage_units(stage: str, stats: dict[str, Any], passages: int) -> tuple[str, int]:
    """What a stage's rate counts: passages for every per-passage stage, queries otherwise."""
    if stage == "encode-queries":
        return "queries", int(stats["rows_in"])
    return "passages", passages


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
            runs[lay.name] = run_layout(lay, workdir, corpus, models, args)
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
            bench_config("<run root>", corpus, models, args, layouts[0]).model_dump_json()
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
