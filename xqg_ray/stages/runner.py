"""Run a part task over its pending parts: on a Ray Data actor pool, or in this process.

Both paths call the same task object, so the Ray wrapper stays thin: it only decides where the
task runs. The task writes its output part itself (atomically) and returns a small stats row with
the records of what it wrote (rows, bytes, sha256 per table: `part_result`), so outputs are
committed as soon as each part finishes, a killed run loses at most the parts in flight, and the
driver assembles each table's manifest from those records without reading a part back.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from xqg_ray.config import RayConfig, StageResources
from xqg_ray.console import interactive, stage_line
from xqg_ray.errors import ConfigError, XqgError
from xqg_ray.ray_start import start_ray
from xqg_ray.storage import PartitionedTable, write_json_atomic

PartTask = Callable[[str], dict[str, Any]]
RAY_DATA_RETRY_NOTE = "\nFailed to apply UDF transform"


def part_result(
    part: str,
    rows_in: int,
    rows_out: int,
    written: dict[str, dict[str, Any]],
    **extra: float | str,
) -> dict[str, Any]:
    """What a part task returns: its counts and, per table URL, the record `write_part` gave
    (`extra`: further per-part timings, summed into the stage's stats, or labels such as the
    model's `engine`, collected).

    The records travel as one JSON string, a plain column in a Ray Data batch."""
    return {
        "part": part,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "written": json.dumps(written, sort_keys=True),
        **extra,
    }


def set_threads(threads: int) -> None:
    """Pin torch/BLAS threads; Ray sets OMP threads to the actor's num_cpus, which may differ."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def worker_threads(resources: StageResources, ray_cfg: RayConfig, workers: int) -> int:
    """Threads per worker: `threads` when set, else the stage's share of the machine. Stages
    run one at a time, so on one machine (no Ray, or a one-node Ray) its CPUs are split among
    the pool's `workers`: one actor reserving one of two CPUs ran mT5 generation at 0.61x the
    engine on both (`bench/pipeline_share.py`, idle machine). On a multi-node cluster, where Ray
    may pack actors onto one node, each keeps what it reserves (`num_cpus`)."""
    if resources.threads:
        return resources.threads
    reserved = max(1, int(resources.num_cpus))
    if ray_cfg.enabled:
        import ray

        if sum(1 for node in ray.nodes() if node["Alive"]) != 1:
            return reserved
        cpus = int(ray.cluster_resources().get("CPU", reserved))
    else:
        cpus = ray_cfg.num_cpus or len(os.sched_getaffinity(0))
    return max(reserved, cpus // max(1, workers))


def loads_model(factory: Callable[[], PartTask]) -> bool:
    """Whether a task is worth an actor: one that loads a model sets `loads_model = True`."""
    target = factory.func if isinstance(factory, functools.partial) else factory
    return bool(getattr(target, "loads_model", False))


class PartWorker:
    """Ray Data callable class: builds the task once per actor, then runs it per part name."""

    def __init__(self, factory: Callable[[], PartTask], threads: int):
        if loads_model(factory):
            set_threads(threads)
        self.task = factory()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        for part in batch["part"]:
            start = time.perf_counter()
            row = self.task(str(part))
            rows.append({**row, "seconds": time.perf_counter() - start, "node": _node_id()})
        return {key: np.array([row[key] for row in rows]) for key in rows[0]}


def _node_id() -> str:
    """The Ray node a part ran on (empty without Ray): shows where the scheduler put the work."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def run_parts_once(batch: dict[str, np.ndarray], factory: Callable[[], PartTask]) -> dict:
    """Ray Data function for tasks without a model: built per batch, no actor to start."""
    return PartWorker(factory, threads=1)(batch)


def ensure_ray(cfg: RayConfig) -> None:
    """Join `ray.address`, or RAY_ADDRESS (as under `ray job submit`), else start a local Ray.

    Without either, a fresh local instance is started even if a `ray start` cluster runs on the
    machine: joining one must be asked for (`ray.address: auto`).
    """
    import ray

    start_ray(cfg.address, cfg.num_cpus)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = cfg.progress_bars
    context.enable_operator_progress_bars = False  # one bar per stage, named after it


def check_resources(stage: str, resources: StageResources) -> None:
    """Refuse a pool the cluster can never schedule, instead of letting Ray Data wait forever."""
    import ray

    total = ray.cluster_resources()
    if resources.num_gpus > 0 and total.get("GPU", 0) < resources.num_gpus:
        raise ConfigError(
            f"stages.{stage}.num_gpus={resources.num_gpus} but the Ray cluster has "
            f"{total.get('GPU', 0):g} GPUs: lower it (0 = CPU) or add GPU nodes"
        )
    if total.get("CPU", 0) < resources.num_cpus:
        raise ConfigError(
            f"stages.{stage}.num_cpus={resources.num_cpus} but the Ray cluster has "
            f"{total.get('CPU', 0):g} CPUs"
        )


def run_parts(
    name: str,
    factory: Callable[[], PartTask],
    pending: list[str],
    resources: StageResources,
    ray_cfg: RayConfig,
) -> list[dict[str, Any]]:
    """Run `factory()`'s task over `pending` parts; returns one stats row per part."""
    if not pending:
        return []
    if not ray_cfg.enabled:
        threads = worker_threads(resources, ray_cfg, 1)
        set_threads(threads)
        worker = PartWorker(factory, threads)
        from tqdm.auto import tqdm

        rows = []
        bar = ray_cfg.progress_bars and interactive()  # elsewhere `run_stage` prints a line
        for part in tqdm(pending, desc=name, unit="part", disable=not bar):
            batch = worker({"part": np.array([part])})
            rows.append({key: value[0].item() for key, value in batch.items()})
        return rows
    import ray

    ensure_ray(ray_cfg)
    check_resources(name, resources)
    actors = min(resources.actors, len(pending))
    threads = worker_threads(resources, ray_cfg, actors)
    # a part task's own error (a StorageError naming the object, an InputError naming the row)
    # reaches the driver as itself, not as Ray Data's "UDF failed to process a data block"
    ray.data.DataContext.get_current().raise_original_map_exception = True
    dataset = ray.data.from_items(
        [{"part": part} for part in pending], override_num_blocks=len(pending)
    )
    remote_args: dict[str, Any] = {"num_cpus": resources.num_cpus}
    if resources.num_gpus:
        remote_args["num_gpus"] = resources.num_gpus
    if loads_model(factory):
        mapped = dataset.map_batches(
            PartWorker,
            fn_constructor_kwargs={"factory": factory, "threads": threads},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=actors),
            **remote_args,
        )
    else:
        mapped = dataset.map_batches(
            run_parts_once, fn_kwargs={"factory": factory}, batch_size=1, **remote_args
        )
    mapped.set_name(name)  # its progress bar and logs name the stage
    with worker_errors():
        results = mapped.take_all()
    return [{key: _plain(value) for key, value in row.items()} for row in results]


@contextmanager
def worker_errors() -> Iterator[None]:
    """Around a wait on Ray work: a worker's own XqgError is raised as itself, without Ray's
    wrappers or the retry hint Ray Data appends to its message."""
    try:
        yield
    except Exception as exc:
        found = user_error(exc)
        if found is None:
            raise
        message = str(found).split(RAY_DATA_RETRY_NOTE)[0].rstrip()
        found.args = (message, *found.args[1:])
        raise found from exc


def user_error(exc: BaseException) -> XqgError | None:
    """The XqgError a worker raised, out of Ray's wrappers (`RayTaskError.cause`) and the chain."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(current, XqgError) and not isinstance(cause, XqgError):
            return current
        todo += [cause, current.__cause__, current.__context__]
    return None


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def run_stage(
    name: str,
    factory: Callable[[], PartTask],
    parts: list[str],
    target: PartitionedTable,
    resources: StageResources,
    ray_cfg: RayConfig,
    meta: dict[str, Any],
    stats_url: str,
    also: Sequence[tuple[PartitionedTable, dict[str, Any]]] = (),
) -> dict[str, Any]:
    """Compute the missing parts of `target` (and of the tables in `also`, which the same task
    writes part by part), finalise them from the tasks' records, and record the throughput."""
    targets = [(target, meta), *also]
    complete = 0
    for table, table_meta in targets:
        existing = table.manifest()
        if existing and existing.get("complete"):
            if existing.get("meta") != table_meta:
                raise ConfigError(
                    f"{table.url} was built with {existing.get('meta')}, this run asks for "
                    f"{table_meta}: use a new run root (or delete that folder) to rebuild it"
                )
            complete += 1
    if complete == len(targets):
        return {"stage": name, "skipped": True, "parts": len(parts)}
    done = set(parts)
    for table, _ in targets:
        done &= set(table.recorded_parts())
    pending = [part for part in parts if part not in done]
    start = time.perf_counter()
    rows = run_parts(name, factory, pending, resources, ray_cfg)
    seconds = time.perf_counter() - start
    records: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        for url, record in json.loads(row["written"]).items():
            records.setdefault(url.rstrip("/"), {})[row["part"]] = record
    written = 0
    for table, table_meta in [*also, (target, meta)]:  # `target` last: complete means all are
        mine = records.get(table.url, {})
        written += sum(int(record.get("bytes", 0)) for record in mine.values())
        table.finalize(meta=table_meta, expected=parts, records=mine)
    rows_in = sum(row["rows_in"] for row in rows)
    stats = {
        "stage": name,
        "parts": len(parts),
        "parts_computed": len(pending),
        "rows_in": rows_in,
        "rows_out": sum(row["rows_out"] for row in rows),
        "bytes_written": written,
        "seconds": seconds,
        "rows_per_second": rows_in / seconds if seconds > 0 else None,
        "task_seconds": sum(row["seconds"] for row in rows),
        "nodes": sorted({row["node"] for row in rows if row["node"]}),
        "backend": "ray-data" if ray_cfg.enabled else "local",
    }
    for key in sorted({key for row in rows for key in row} - set(stats) - STATS_ROW_KEYS):
        values = [row[key] for row in rows if key in row]
        if any(isinstance(value, str) for value in values):
            stats[key] = ", ".join(sorted({str(value) for value in values}))
        else:
            stats[key] = sum(values)
    write_json_atomic(stats_url, stats)
    stage_line(name, rows_in, seconds, ray_cfg.progress_bars)
    return stats


STATS_ROW_KEYS = {"part", "written", "node"}


def tasks_in_order(
    ray_cfg: RayConfig, calls: Sequence[tuple], num_cpus: float = 1, num_gpus: float = 0
) -> Iterator[Any]:
    """`fn(*args)` for each call, yielded in call order: Ray tasks with at most twice the
    cluster's CPUs in flight (so results are consumed as they come, never all held at once), or
    here in turn when Ray is disabled. In order, so a fold over the results is deterministic.
    The one place plain Ray tasks start; a task's own XqgError is raised as itself."""
    if not ray_cfg.enabled:
        for fn, *args in calls:
            yield fn(*args)
        return
    import ray

    ensure_ray(ray_cfg)
    window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    queue = list(calls)
    in_flight: list[Any] = []
    while queue or in_flight:
        while queue and len(in_flight) < window:
            fn, *args = queue.pop(0)
            task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=2)(fn)
            in_flight.append(task.remote(*args))
        with worker_errors():
            result = ray.get(in_flight.pop(0))
        yield result
