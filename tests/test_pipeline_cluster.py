"""The pipeline on a several-node Ray cluster on one machine: GPU-shaped scheduling, a node
removed mid-run, and a driver killed mid-stage, each compared with an undisturbed run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import yaml
from helpers import tiny_run_config
from ray.cluster_utils import Cluster
from test_pipeline import assert_same_outputs

from xqg_ray.paths import RunPaths
from xqg_ray.ray_start import start_ray
from xqg_ray.stages.pipeline import build
from xqg_ray.storage import PartitionedTable

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_models, shared_data):
    cfg = tiny_run_config(
        str(tmp_path_factory.mktemp("reference") / "run"),
        tiny_models,
        shared_data,
        ray={"enabled": False, "progress_bars": False},
        collection={"passages_per_part": 1},
    )
    build(cfg)
    return cfg


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU), a CPU worker and a worker that declares one GPU (no real GPU needed)."""
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cpu_worker = nodes.add_node(num_cpus=1)
    gpu_worker = nodes.add_node(num_cpus=1, num_gpus=1)
    start_ray(address=nodes.address)
    nodes.wait_for_nodes()
    yield nodes, cpu_worker, gpu_worker
    ray.shutdown()
    nodes.shutdown()


def _copy(reference, root: str, **sections):
    models = {"bert": reference.encoder.model, "mt5": reference.generator.model}
    return tiny_run_config(
        root,
        models,
        Path(reference.dataset.data_dir).parent,
        collection={"passages_per_part": 1},
        **sections,
    )


def _wait_for_parts(url: str, at_least: int, timeout: float = 120) -> int:
    table = PartitionedTable(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = len(table.committed_parts())
        if done >= at_least:
            return done
        time.sleep(0.05)
    raise TimeoutError(f"{url}: fewer than {at_least} parts after {timeout} s")


# runs first, before the cluster fixture starts a cluster the driver could join
def _settled_parts(table: PartitionedTable, quiet_s: float = 3.0, limit_s: float = 60.0) -> int:
    """Committed parts once no more arrive: a worker of the killed driver may still be finishing
    the part it was writing (its data, then its record) when the driver dies."""
    deadline = time.monotonic() + limit_s
    count = len(table.committed_parts())
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = len(table.committed_parts())
        if now == count:
            return count
        count = now
    raise AssertionError(f"{table.url}: parts still arriving {limit_s} s after the kill")


def test_killed_driver_resumes_with_only_missing_parts(reference, tmp_path):
    cfg = _copy(reference, str(tmp_path / "killed"), ray={"progress_bars": False, "num_cpus": 2})
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump()))
    driver = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "build_index.py"), "--config", str(config_file)],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    generated = RunPaths(cfg.root).generated(cfg.generator.name)
    try:
        done = _wait_for_parts(generated, 3)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    table = PartitionedTable(generated)
    done = _settled_parts(table)
    assert not table.is_complete(), "the stage finished before the kill: nothing to resume"
    resumed = build(cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"enabled": False})}))
    assert resumed["stages"]["generate"]["parts_computed"] == 12 - done
    assert_same_outputs(reference, cfg)


def test_gpu_shaped_actors_land_on_the_gpu_node_and_a_removed_node_is_survived(
    reference, cluster, tmp_path
):
    """One run on the three-node cluster: encode asks for a GPU, so its actors run on the node
    that declares one (the batch code falls back to the CPU, as torch sees no CUDA device);
    the CPU worker is removed while generate runs, and the run still completes correctly."""
    nodes, cpu_worker, gpu_worker = cluster
    cfg = _copy(
        reference,
        str(tmp_path / "removed"),
        stages={
            "generate": {"actors": 2, "num_cpus": 0.5},
            "encode": {"num_gpus": 1, "num_cpus": 0.5},
        },
    )
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["report"] = build(cfg)
        except BaseException as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    generated = RunPaths(cfg.root).generated(cfg.generator.name)
    _wait_for_parts(generated, 2)
    nodes.remove_node(cpu_worker)
    worker.join(timeout=600)
    assert not worker.is_alive(), "pipeline did not finish after the node was removed"
    assert "error" not in outcome, outcome.get("error")
    assert PartitionedTable(generated).is_complete()
    report = outcome["report"]
    assert report["stages"]["encode-passages"]["nodes"] == [gpu_worker.node_id]
    assert report["stages"]["encode-queries"]["nodes"] == [gpu_worker.node_id]
    assert_same_outputs(reference, cfg)
