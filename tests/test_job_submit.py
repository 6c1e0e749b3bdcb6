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

import pytest
import yaml
from helpers import tiny_run_config

from xqg_ray.index.shards import load_manifest
from xqg_ray.paths import RunPaths
from xqg_ray.serve.local import free_port

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
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


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
