"""Throughput builds: where the stages run (a layout), the run config, the Ray they start on, and
the stats they leave.

`pipeline_throughput` and the sweeps build the synthetic corpus with the same config, so a sweep
point and a benchmark run with the same values are the same build.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from xqg_ray.config import STRATEGIES, RunConfig
from xqg_ray.paths import RunPaths
from xqg_ray.ray_start import start_ray
from xqg_ray.storage import exists, read_json


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


@dataclass(frozen=True)
class BuildSettings:
    """The values a throughput build takes besides its layout (the benchmark's flags)."""

    passages_per_part: int
    generate_batch_size: int
    encode_batch_size: int
    languages: list[str]
    queries_per_language: int
    max_new_tokens: int
    strategies: list[str]
    cpus: int


def bench_config(
    root: str, corpus: dict[str, str], models: dict[str, str], settings: BuildSettings, lay: Layout
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
                "batch_size": settings.encode_batch_size,
                "device": "cpu",
            },
            "generator": {
                "backend": "hf",
                "model": models["mt5"],
                "languages": settings.languages,
                "queries_per_language": settings.queries_per_language,
                "max_new_tokens": settings.max_new_tokens,
                "batch_size": settings.generate_batch_size,
                "device": "cpu",
            },
            "collection": {"passages_per_part": settings.passages_per_part},
            "augment": {"strategies": settings.strategies, "expand_max_length": 256},
            "stages": stages,
            "ray": {"enabled": lay.ray, "num_cpus": settings.cpus, "progress_bars": False},
        }
    )


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


def stage_units(stage: str, stats: dict[str, Any], passages: int) -> tuple[str, int]:
    """What a stage's rate counts: passages for every per-passage stage, queries otherwise."""
    if stage == "encode-queries":
        return "queries", int(stats["rows_in"])
    return "passages", passages


def start_local_ray(cpus: int) -> dict[str, float]:
    """A fresh local Ray (never a cluster another process started here), and a first trivial
    Dataset: one-off costs, kept out of the stage figures."""
    import ray

    start = time.perf_counter()
    start_ray(num_cpus=cpus)
    ray.data.DataContext.get_current().enable_progress_bars = False
    init = time.perf_counter() - start
    start = time.perf_counter()
    ray.data.range(cpus, override_num_blocks=cpus).map_batches(lambda batch: batch).take_all()
    return {"init": init, "first_dataset": time.perf_counter() - start}
