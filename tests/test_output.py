"""What a person reads off a terminal: one line per stage, Ray's logs in the run root's log
file (named once), and `--verbose` bringing them back (README, "Output and logs")."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import tiny_run_config

pytestmark = pytest.mark.ray

RAY_LINES = ("Started a local Ray instance", "Running Dataset", "\tINFO ", " pid=")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, tiny_models, shared_data) -> Path:
    """Dense only (no generation) on 2 CPUs: the cheapest build that runs Ray Data stages."""
    base = tmp_path_factory.mktemp("output")
    cfg = tiny_run_config(
        str(base / "run"),
        tiny_models,
        shared_data,
        augment={"strategies": ["dense"]},
        ray={"progress_bars": True, "num_cpus": 2},
    )
    path = base / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump()))
    return path


def xqg_ray(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("xqg-ray", path=str(Path(sys.executable).parent))
    assert exe, "the xqg-ray console script is not installed next to this Python"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)


def test_off_a_terminal_one_line_per_stage_and_ray_logs_in_the_file(config_file):
    done = xqg_ray("build", "--config", str(config_file))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    stages = [line for line in lines if " rows in " in line]
    assert [line.split(":")[0] for line in stages] == ["encode-passages", "encode-queries"]
    assert "encode-passages: 12 rows in " in stages[0]
    assert not [line for line in lines if any(mark in line for mark in RAY_LINES)], done.stderr
    named = [line for line in lines if line.startswith("logs: ")]
    assert len(named) == 1
    log = Path(named[0].removeprefix("logs: ").split(" (")[0])
    assert log.parent == config_file.parent / "run" / "logs"
    text = log.read_text()
    assert "Started a local Ray instance" in text and "encode-passages" in text


def test_verbose_puts_ray_logs_back_on_the_terminal(config_file):
    done = xqg_ray("evaluate", "--config", str(config_file), "--verbose")
    assert done.returncode == 0, done.stderr
    assert "Started a local Ray instance" in done.stderr
    assert "logs: " not in done.stderr
    # the evaluation is a stage of its own: one line off a terminal
    evaluated = [line for line in done.stderr.splitlines() if line.startswith("evaluate: ")]
    assert len(evaluated) == 1 and " rows in " in evaluated[0], done.stderr
