"""`ray job submit --working-dir . -- python jobs/build_index.py ...` against `ray start --head`."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from helpers import tiny_run_config

from xqg_ray.config import load_config
from xqg_ray.index.shards import load_manifest
from xqg_ray.paths import RunPaths
from xqg_ray.serve.local import free_port
from xqg_ray.stages.roles import run_roles

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A real head node with the job server; only this process group is stopped afterwards."""
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    dashboard = free_port()
    temp_dir = tmp_path_factory.mktemp("rayhead")
    process = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--num-cpus=2",
            "--disable-usage-stats",
            f"--port={free_port()}",
            f"--dashboard-port={dashboard}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield f"http://127.0.0.1:{dashboard}", env
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=3)  # `ray start --block` often outlasts any wait: then kill it
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def submit(address: str, env: dict, *entrypoint: str) -> subprocess.CompletedProcess:
    """`ray job submit`, retried while the freshly started head has no job agent yet."""
    deadline = time.monotonic() + 120
    while True:
        done = subprocess.run(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                "--address",
                address,
                "--working-dir",
                str(REPO),
                "--",
                *entrypoint,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        retry = "No available agent" in done.stderr or "Connection refused" in done.stderr
        if not retry or time.monotonic() > deadline:
            return done
        time.sleep(2)


@pytest.fixture(scope="module")
def built(head, tiny_models, shared_data, tmp_path_factory):
    """jobs/build_index.py submitted to the head: the run the other tests read."""
    address, env = head
    folder = tmp_path_factory.mktemp("job")
    cfg = tiny_run_config(
        str(folder / "run"), tiny_models, shared_data, augment={"strategies": ["dense", "xqg"]}
    )
    config_file = folder / "job.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump()))
    done = submit(address, env, "python", "jobs/build_index.py", "--config", str(config_file))
    return cfg, config_file, done


def test_build_index_job_runs_unchanged_under_ray_job_submit(built):
    cfg, _, done = built
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    for strategy in ("dense", "xqg"):
        manifest = load_manifest(RunPaths(cfg.root).index(cfg.encoder.name, strategy))
        assert manifest["n_total"] == 12
    # the stages ran on the submitted cluster's Ray Data, not in-process
    assert '"backend": "ray-data"' in done.stdout


def test_evaluate_job_runs_under_ray_job_submit(head, built):
    address, env = head
    cfg, config_file, _ = built
    done = submit(
        address,
        env,
        "python",
        "jobs/evaluate.py",
        "--config",
        str(config_file),
        "--set",
        "evaluate.settings=[x-en, de-en]",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    evaluation = json.loads(
        (Path(RunPaths(cfg.root).results(cfg.evaluate.experiment)) / "evaluation.json").read_text()
    )
    assert set(evaluation["settings"]) == {"x-en", "de-en"}
    assert set(evaluation["settings"]["de-en"]["strategies"]["xqg"]["per_lang"]) == {"de"}


def test_sweep_job_runs_under_ray_job_submit(head, built, tmp_path):
    address, env = head
    cfg, config_file, _ = built
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        yaml.safe_dump({"run": {"config": str(config_file)}, "sweeps": {"index": {}}})
    )
    done = submit(
        address, env, "python", "jobs/sweep.py", "--config", str(sweep_file), "--only", "index"
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sweep_dir = Path(RunPaths(cfg.root).results(cfg.evaluate.experiment)) / "sweep"
    rows = json.loads((sweep_dir / "index.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert {row["strategy"] for row in rows} == {"dense", "xqg"}


def test_job_with_a_bad_config_fails_with_the_field_named(head, tmp_path):
    address, env = head
    bad = tmp_path / "bad.yaml"
    bad.write_text("augment:\n  strategies: [dense, colbert]\n")
    done = submit(address, env, "python", "jobs/build_index.py", "--config", str(bad))
    assert done.returncode != 0
    assert "augment.strategies" in done.stdout + done.stderr


def test_shipped_xquad_r_config_builds_and_evaluates_under_ray_job_submit(
    head, tiny_models, shared_data, tmp_path
):
    """jobs/configs/evaluate-xquad-r.yaml as shipped (dev/test split, mAP@20 tuning, all four
    strategies), cut to 3 paragraph groups in de + en with the tiny BERT via `--set`."""
    address, env = head
    root = tmp_path / "run"
    overrides = [
        f"root={root}",
        f"encoder.model={tiny_models['bert']}",
        f"dataset.data_dir={shared_data / 'xquad-r'}",
        "dataset.languages=[de, en]",
        "dataset.max_passages=3",
        "generator.languages=[de, en]",
        "stages.encode.num_cpus=0.5",
        "ray.progress_bars=false",
    ]
    config = ["--config", "jobs/configs/evaluate-xquad-r.yaml"]
    sets = [arg for value in overrides for arg in ("--set", value)]
    for job in ("jobs/build_index.py", "jobs/evaluate.py"):
        done = submit(address, env, "python", job, *config, *sets)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = Path(RunPaths(str(root)).results("xquad-r-pool"))
    evaluation = json.loads((results / "evaluation.json").read_text())
    assert evaluation["measures"][0] == "mAP@20"
    assert set(evaluation["strategies"]) == {"dense", "xqg", "expand", "multivector"}
    tuning = json.loads((results / "xqg_tuning.json").read_text())
    assert tuning["measure"] == "mAP@20" and tuning["dev_queries"] > 0
    # every scored query is a test query: dev groups choose alpha, generation groups stand in
    roles = run_roles(load_config("jobs/configs/evaluate-xquad-r.yaml", overrides))
    scored = set(pq.read_table(results / "per_query.parquet")["qid"].to_pylist())
    assert scored and {roles[qid] for qid in scored} == {"test"}
    assert "## XQuAD-R beside LAReQA" in (results / "report.md").read_text()
