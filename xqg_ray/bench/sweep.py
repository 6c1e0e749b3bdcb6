"""Throughput and latency sweeps with machine-readable rows, on top of the existing benchmarks.

The grids come from a sweep YAML (`jobs/configs/sweep-*.yaml`, `SweepConfig`). Every sweep writes
`<name>.json` (rows, machine, settings) and `<name>.csv` (the same rows, flat) into the results
folder, by default `<run root>/results/<experiment>/sweep/`, where `report/render.py` reads them:

- generation: passages/s and generated tokens/s vs batch size, actors, queries per language and
  number of languages (one axis at a time around the first value of each list);
- encoding: passages/s vs passage max length and batch size;
- index: build seconds, entries, shards and bytes of each strategy, from the run's stats/index.json;
- search: p50/p99 latency and QPS of each strategy's index vs shards, replicas and concurrency,
  through the Serve app (`measure_service`) and in-process FAISS (`bench/load.in_process`);
- scaling: end-to-end build throughput and per-stage rates vs actors per stage (1..N).

Generation, encoding and scaling run on the synthetic corpus (`bench/synthetic.py`) built with
`bench/builds.bench_config`, so their figures match `pipeline_throughput`'s.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from xqg_ray.bench.builds import (
    BuildSettings,
    Layout,
    bench_config,
    local_layout,
    ray_layout,
    stage_stats,
    stage_units,
    start_local_ray,
)
from xqg_ray.bench.harness import machine_info
from xqg_ray.bench.load import HOST, healthz_floor, http_load, in_process
from xqg_ray.bench.synthetic import synthetic_corpus
from xqg_ray.config import RunConfig, load_config, parse_override, read_yaml_mapping, set_path
from xqg_ray.errors import ConfigError
from xqg_ray.paths import RunPaths
from xqg_ray.ray_start import start_ray
from xqg_ray.stages.encode import EncodeTask
from xqg_ray.stages.generate import GenerateTask
from xqg_ray.stages.pipeline import build, ingest, make_plan
from xqg_ray.stages.runner import run_stage
from xqg_ray.storage import PartitionedTable, join, read_json, write_json_atomic, write_text_atomic
from xqg_ray.strict import Strict, validate

SWEEPS = ("generation", "encoding", "index", "search", "scaling")
SEARCH_APP = "sweep-search-bench"


class RunRef(Strict):
    """The built (and evaluated) run whose indexes and stats the sweeps measure."""

    config: str = Field(description="The run's YAML config (as given to build_index.py).")
    set: list[str] = Field(default_factory=list, description="key.path=value overrides.")


class Base(Strict):
    """Values every throughput build uses unless its own axis changes them."""

    passages_per_part: int = Field(default=16, ge=1, description="Passages per part.")
    generate_batch_size: int = Field(default=8, ge=1, description="Passages per generate call.")
    encode_batch_size: int = Field(default=16, ge=1, description="Texts per encode call.")
    languages: list[str] = Field(
        default_factory=lambda: ["de", "ar"], description="Generated languages."
    )
    queries_per_language: int = Field(default=2, ge=1, description="Queries per language.")
    max_new_tokens: int = Field(default=8, ge=1, description="Generated tokens per query.")
    threads: int = Field(default=1, ge=1, description="Torch threads per generate actor.")


class GenerationGrid(Strict):
    batch_size: list[int] = Field(default_factory=lambda: [8], description="Generate batch sizes.")
    actors: list[int] = Field(default_factory=lambda: [1], description="Generate actor counts.")
    queries_per_language: list[int] = Field(
        default_factory=lambda: [2], description="Queries per language."
    )
    languages: list[int] = Field(default_factory=lambda: [2], description="First N base languages.")


class EncodingGrid(Strict):
    max_length: list[int] = Field(default_factory=lambda: [128], description="Passage lengths.")
    batch_size: list[int] = Field(default_factory=lambda: [16], description="Encode batch sizes.")


class SearchGrid(Strict):
    strategies: list[str] | None = Field(default=None, description="Default: the run's.")
    shards: list[int] = Field(default_factory=lambda: [1], description="Shard counts.")
    replicas: list[int] = Field(default_factory=lambda: [1], description="Replicas per shard.")
    concurrency: list[int] = Field(default_factory=lambda: [1], description="Client concurrency.")
    requests: int = Field(default=100, ge=1, description="Requests per grid point.")
    max_duration_s: float = Field(default=30.0, gt=0, description="Time cap per grid point.")
    k: int = Field(default=10, ge=1, description="Results per query.")
    service: bool = Field(default=True, description="false: in-process FAISS only (no Serve).")
    shard_num_cpus: float = Field(default=0.1, description="CPUs per shard replica.")
    router_num_cpus: float = Field(default=0.1, description="CPUs per router replica.")
    max_batch_size: int = Field(default=16, description="Serve batch size of the replicas.")


class ScalingGrid(Strict):
    actors: list[int] = Field(default_factory=lambda: [1, 2], description="Actor counts.")
    strategies: list[str] = Field(default_factory=lambda: ["xqg"], description="Strategies built.")


class Grids(Strict):
    generation: GenerationGrid | None = Field(default=None, description="Generate throughput.")
    encoding: EncodingGrid | None = Field(default=None, description="Encode throughput.")
    index: dict | None = Field(
        default=None,
        description="Index build seconds and sizes, from the run's stats ({} turns it on).",
    )
    search: SearchGrid | None = Field(default=None, description="Search latency and QPS.")
    scaling: ScalingGrid | None = Field(default=None, description="Throughput against actors.")


class SweepConfig(Strict):
    """A sweep YAML: the run it measures, the throughput builds' setup, and the grids."""

    run: RunRef
    experiment: str = Field(default="", description="Default: the run's evaluate.experiment.")
    cpus: int = Field(default=2, ge=1, description="CPUs of the local Ray (and torch threads).")
    ray: bool = Field(default=True, description="false: throughput builds run in this process.")
    actor_num_cpus: float = Field(default=0.5, gt=0, description="CPUs per throughput actor.")
    passages: int = Field(default=64, ge=1, description="Synthetic corpus size.")
    xquad_dir: str = Field(default="", description="XQuAD folder; default: shared or cache.")
    models: dict[str, str] = Field(
        default_factory=dict, description="{mt5: .., bert: ..}; empty: the tiny offline models."
    )
    overrides: list[str] = Field(
        default_factory=list,
        description="Run-config key=value applied to every throughput build (encoder.device=cuda).",
    )
    base: Base = Field(default_factory=Base)
    sweeps: Grids = Field(default_factory=Grids)


def load_sweep_config(path: str, overrides: list[str] | None = None) -> SweepConfig:
    """The sweep YAML with `key.path=value` overrides; errors name the file and the field."""
    data = read_yaml_mapping(path)
    for item in overrides or []:
        set_path(data, *parse_override(item))
    return validate(SweepConfig, data, f"{path}: invalid sweep config")


def results_dir(run: RunConfig, experiment: str) -> str:
    return join(RunPaths(run.root).results(experiment), "sweep")


# --- output -------------------------------------------------------------------------------------


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV; the header is the union of keys in first-seen order."""
    header = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_sweep(out: str, name: str, rows: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    write_json_atomic(
        join(out, f"{name}.json"),
        {"sweep": name, "machine": machine_info(), "settings": settings, "rows": rows},
    )
    write_text_atomic(join(out, f"{name}.csv"), csv_text(rows))


# --- throughput builds on the synthetic corpus ---------------------------------------------------


class Builds:
    """Fresh run roots under one work folder, all over the same synthetic corpus."""

    def __init__(self, sweep: SweepConfig, workdir: Path):
        from xqg_ray.datasets.fetch import cache_root, ensure_dataset
        from xqg_ray.testing.tiny import ensure_tiny_models

        self.sweep = sweep
        self.workdir = workdir
        xquad_dir = ensure_dataset("xquad", sweep.xquad_dir or None)
        self.models = sweep.models or ensure_tiny_models(cache_root() / "tiny-models", xquad_dir)
        self.corpus = synthetic_corpus(workdir / "corpus", sweep.passages, xquad_dir)
        self.count = 0

    def config(self, layout: Layout, **changes: Any) -> RunConfig:
        """`bench_config` with this point's values and the sweep overrides."""
        self.count += 1
        base = self.sweep.base
        settings = BuildSettings(
            **base.model_dump(exclude={"threads"}), strategies=["dense"], cpus=self.sweep.cpus
        )
        cfg = bench_config(
            str(self.workdir / f"point-{self.count:03d}"),
            self.corpus,
            self.models,
            replace(settings, **changes),
            layout,
        )
        data = cfg.model_dump()
        for item in self.sweep.overrides:
            set_path(data, *parse_override(item))
        return RunConfig.model_validate(data)

    def layout(self, generate_actors: int, encode_actors: int = 1) -> Layout:
        base = self.sweep.base
        if not self.sweep.ray:
            if generate_actors > 1 or encode_actors > 1:
                raise ConfigError("sweep: more than one actor needs `ray: true`")
            return local_layout(base.threads)
        spec = f"{generate_actors}x{base.threads}:{encode_actors}x{base.threads}"
        return ray_layout(spec, self.sweep.actor_num_cpus)


def run_one_stage(cfg: RunConfig, stage: str) -> dict[str, Any]:
    """Ingest and plan a fresh root, then run only `generate` or `encode-passages` (timed by
    the runner, as in a build)."""
    ingest(cfg)
    parts, _ = make_plan(cfg)
    paths = RunPaths(cfg.root)
    if stage == "generate":
        factory, target = GenerateTask, paths.generated(cfg.generator.name)
        resources = cfg.stages.generate
    else:
        factory = functools.partial(EncodeTask, kind="passages")
        target, resources = paths.embeddings(cfg.encoder.name, "passages"), cfg.stages.encode
    return run_stage(
        stage,
        functools.partial(factory, cfg),
        parts,
        PartitionedTable(target),
        resources,
        cfg.ray,
        {},
        paths.stats(stage),
    )


def generated_tokens(cfg: RunConfig) -> int:
    """Tokens in the generated queries, re-tokenised with the generator's own tokenizer (no
    special tokens): what the decoder produced, bar the end-of-sequence token."""
    from xqg_ray.models.loading import load_tokenizer, resolve_model_path

    texts = PartitionedTable(RunPaths(cfg.root).generated(cfg.generator.name)).read(["text"])
    tokenizer = load_tokenizer(resolve_model_path(cfg.generator.model))
    ids = tokenizer(texts["text"].to_pylist(), add_special_tokens=False)["input_ids"]
    return sum(len(row) for row in ids)


def axis_points(base: dict[str, Any], axes: dict[str, list[Any]]) -> Iterator[tuple[str, dict]]:
    """One axis at a time, the others at their first value; a repeated point is yielded once
    per axis it belongs to (the caller caches by the point's values)."""
    for axis, values in axes.items():
        for value in values:
            yield axis, {**base, axis: value}


def sweep_generation(builds: Builds, grid: GenerationGrid) -> list[dict[str, Any]]:
    base_langs = builds.sweep.base.languages
    if max(grid.languages) > len(base_langs):
        raise ConfigError(
            f"sweeps.generation.languages: at most {len(base_langs)} (base.languages)"
        )
    axes = grid.model_dump()
    first = {axis: values[0] for axis, values in axes.items()}
    measured: dict[tuple, dict[str, Any]] = {}
    rows = []
    for axis, point in axis_points(first, axes):
        key = tuple(sorted(point.items()))
        if key not in measured:
            cfg = builds.config(
                builds.layout(point["actors"]),
                strategies=["xqg"],
                generate_batch_size=point["batch_size"],
                queries_per_language=point["queries_per_language"],
                languages=base_langs[: point["languages"]],
            )
            stats = run_one_stage(cfg, "generate")
            tokens = generated_tokens(cfg)
            measured[key] = {
                "passages": stats["rows_in"],
                "generated_queries": stats["rows_out"],
                "generated_tokens": tokens,
                "seconds": stats["seconds"],
                "passages_per_second": stats["rows_in"] / stats["seconds"],
                "tokens_per_second": tokens / stats["seconds"],
                "backend": stats["backend"],
            }
        rows.append({"axis": axis, "value": point[axis], **point, **measured[key]})
    return rows


def sweep_encoding(builds: Builds, grid: EncodingGrid) -> list[dict[str, Any]]:
    rows = []
    for max_length, batch_size in itertools.product(grid.max_length, grid.batch_size):
        cfg = builds.config(builds.layout(1), encode_batch_size=batch_size)
        cfg = cfg.model_copy(
            update={"encoder": cfg.encoder.model_copy(update={"passage_max_length": max_length})}
        )
        stats = run_one_stage(cfg, "encode-passages")
        rows.append(
            {
                "max_length": max_length,
                "batch_size": batch_size,
                "passages": stats["rows_in"],
                "seconds": stats["seconds"],
                "passages_per_second": stats["rows_in"] / stats["seconds"],
                "backend": stats["backend"],
            }
        )
    return rows


def sweep_scaling(builds: Builds, grid: ScalingGrid) -> list[dict[str, Any]]:
    """A whole build per actor count (generate and encode pools both that size)."""
    rows = []
    for actors in grid.actors:
        cfg = builds.config(builds.layout(actors, actors), strategies=grid.strategies)
        start = time.perf_counter()
        build(cfg)
        seconds = time.perf_counter() - start
        stages = stage_stats(cfg.root)
        row: dict[str, Any] = {
            "actors": actors,
            "passages": builds.sweep.passages,
            "build_seconds": seconds,
            "passages_per_second": builds.sweep.passages / seconds,
        }
        for stage, stats in stages.items():
            unit, count = stage_units(stage, stats, builds.sweep.passages)
            row[f"{stage}_{unit}_per_second"] = count / stats["seconds"]
        rows.append(row)
    return rows


# --- the run's indexes ----------------------------------------------------------------------------


def sweep_index(run: RunConfig) -> list[dict[str, Any]]:
    """Each strategy's index as the run's build recorded it (stats/index.json)."""
    stats = read_json(RunPaths(run.root).stats("index"))
    return [{"strategy": strategy, **row} for strategy, row in stats.items()]


def resharded_index(run: RunConfig, strategy: str, shards: int, workdir: Path) -> str:
    """The strategy's stored entries in `shards` shards (as `stages.index.build_index` builds
    them), in the work folder: the run's own index is never touched."""
    from xqg_ray.index.shards import IndexSpec, build_shards
    from xqg_ray.schema import arrow_to_vectors
    from xqg_ray.stages.augment import multivector_stride
    from xqg_ray.stages.index import entries_url

    entries = PartitionedTable(entries_url(run, strategy)).read()
    ids = entries["id"].to_numpy()
    url = str(workdir / f"index-{strategy}-{shards}shards")
    build_shards(
        arrow_to_vectors(entries["vector"]),
        ids,
        url,
        IndexSpec(shards=shards, factory=run.index.factory, train_sample=run.index.train_sample),
        entry_to_passage=ids // multivector_stride(run) if strategy == "multivector" else None,
        pids=entries["pid"].to_pylist(),
    )
    return url


def _latency(prefix: str, summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("requests", "p50_ms", "p95_ms", "p99_ms", "qps")
    return {"mode": prefix, **{key: summary[key] for key in keys}}


def measure_service(
    index: dict, grid: SearchGrid, port: int, record: Callable[[dict], None]
) -> None:
    """The service (default layout) at each replicas setting and concurrency of the grid, beside
    in-process FAISS; one row per setting."""
    from ray import serve

    from xqg_ray.index.shards import load_manifest
    from xqg_ray.serve.app import build_app, plan
    from xqg_ray.serve.config import ServeConfig

    manifest = load_manifest(index["url"])
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((grid.requests, manifest["dimension"])).astype(np.float32)
    baseline = in_process(index["url"], queries, grid.k)
    for replicas in grid.replicas:
        cfg = ServeConfig(
            index=index["url"],
            port=port,
            replicas_per_shard=replicas,
            shard_num_cpus=grid.shard_num_cpus,
            router_num_cpus=grid.router_num_cpus,
            max_batch_size=grid.max_batch_size,
        )
        plan(cfg, manifest)  # refuses, naming the setting, what Ray cannot place
        serve.run(build_app(cfg), name=SEARCH_APP, route_prefix="/bench")
        url = f"http://{HOST}:{port}/bench/search_vectors"
        asyncio.run(http_load(url, queries[:20], grid.k, 1, 60))  # warm-up
        floor = asyncio.run(healthz_floor(f"http://{HOST}:{port}/bench/healthz"))
        for concurrency in grid.concurrency:
            service, failures = asyncio.run(
                http_load(url, queries, grid.k, concurrency, grid.max_duration_s)
            )
            record(
                {
                    "index": index["label"],
                    "shards": len(manifest["shards"]),
                    "n_total": manifest["n_total"],
                    "replicas_per_shard": replicas,
                    "concurrency": concurrency,
                    "service": service,
                    "failed_or_partial": failures,
                    "in_process": baseline,
                    "healthz": floor,
                }
            )
        serve.delete(SEARCH_APP)


def sweep_search(run: RunConfig, grid: SearchGrid, workdir: Path) -> list[dict[str, Any]]:
    from xqg_ray.index.shards import load_manifest
    from xqg_ray.serve.local import free_port
    from xqg_ray.stages.index import index_url

    strategies = grid.strategies or list(run.augment.strategies)
    rows: list[dict[str, Any]] = []
    port = free_port() if grid.service else 0
    if grid.service:
        from ray import serve

        serve.start(http_options={"host": HOST, "port": port})
    try:
        for strategy in strategies:
            own = index_url(run, strategy)
            for shards in grid.shards:
                same = len(load_manifest(own)["shards"]) == shards
                url = own if same else resharded_index(run, strategy, shards, workdir)
                point = {"strategy": strategy, "shards": shards}
                entries = load_manifest(url)["n_total"]
                if not grid.service:
                    queries = np.random.default_rng(1).standard_normal(
                        (grid.requests, load_manifest(url)["dimension"])
                    )
                    baseline = in_process(url, queries.astype(np.float32), grid.k)
                    rows.append(
                        {**point, "entries": entries, "replicas": None, "concurrency": 1}
                        | _latency("in-process", baseline)
                    )
                    continue
                service_rows: list[dict[str, Any]] = []
                measure_service({"label": strategy, "url": url}, grid, port, service_rows.append)
                baseline = service_rows[0]["in_process"]
                rows.append(
                    {**point, "entries": entries, "replicas": None, "concurrency": 1}
                    | _latency("in-process", baseline)
                )
                for row in service_rows:
                    rows.append(
                        {
                            **point,
                            "entries": entries,
                            "replicas": row["replicas_per_shard"],
                            "concurrency": row["concurrency"],
                        }
                        | _latency("service", row["service"])
                        | {"failed_or_partial": row["failed_or_partial"]}
                    )
    finally:
        if grid.service:
            from ray import serve

            serve.shutdown()
    return rows


# --- driver --------------------------------------------------------------------------------------


def _needs_ray(sweep: SweepConfig) -> bool:
    grids = sweep.sweeps
    return bool(
        (sweep.ray and (grids.generation or grids.encoding or grids.scaling))
        or (grids.search and grids.search.service)
    )


def run_sweeps(
    sweep: SweepConfig,
    out: str | None = None,
    only: list[str] | None = None,
    log: Callable[[str], None] = print,
    run: RunConfig | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Run every configured sweep (or `only` those); write and return their rows by name.

    `run` replaces the run the YAML names (the demo passes its own config)."""
    run = run or load_config(sweep.run.config, sweep.run.set)
    out = out or results_dir(run, sweep.experiment or run.evaluate.experiment)
    grids = sweep.sweeps
    chosen = [
        name for name in SWEEPS if getattr(grids, name) is not None and (not only or name in only)
    ]
    workdir = Path(tempfile.mkdtemp(prefix="xqg-sweep-"))
    started_ray = False
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        if _needs_ray(sweep):
            import ray

            if not ray.is_initialized():
                if os.environ.get("RAY_ADDRESS"):  # under `ray job submit`: the job's cluster
                    start_ray()
                else:
                    start_local_ray(sweep.cpus)
                started_ray = True
        builds = None
        for name in chosen:
            log(f"sweep {name} ...")
            grid = getattr(grids, name)
            if name in ("generation", "encoding", "scaling"):
                builds = builds or Builds(sweep, workdir)
                rows = globals()[f"sweep_{name}"](builds, grid)
            elif name == "index":
                rows = sweep_index(run)
            else:
                rows = sweep_search(run, grid, workdir)
            settings = {"grid": grid if isinstance(grid, dict) else grid.model_dump()}
            settings |= {k: v for k, v in sweep.model_dump().items() if k != "sweeps"}
            if builds is not None and name in ("generation", "encoding", "scaling"):
                settings["models_used"] = builds.models
            write_sweep(out, name, rows, settings)
            results[name] = rows
    finally:
        if started_ray:
            import ray

            ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"sweep results: {out}")
    return results
