"""How quickly the things a user waits on answer: loading XQuAD, `xqg-ray serve` coming up and
stopping on Ctrl-C, and the GPU check refusing on a machine without a GPU.

These were once timed inside the tests, where a busy CI machine made them flaky and a slow
machine made them meaningless; the tests now check only that each thing happens, and this script
measures how long it takes, against the goals below, on a named machine.

- XQuAD: `load_xquad` of all shipped languages (11 files, 1,190 questions each), median of
  `--repeats`; goal under 5 s.
- Serve: `xqg-ray serve --index` on a 4-shard Flat index of `--n` random vectors (no encoder),
  from launch to "search service at" in its output, then SIGINT to exit; goal: stops within
  10 s of Ctrl-C.
- GPU check: `python -m xqg_ray.bench.gpu_check` with no GPU visible, to its refusal; goal under
  60 s (it must refuse at once, not after loading models).

    python -m xqg_ray.bench.responsiveness --out runs/bench/responsiveness.json
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from xqg_ray.bench.harness import format_table, machine_info, write_results
from xqg_ray.config import default_data_dir
from xqg_ray.datasets import load_xquad
from xqg_ray.index.shards import IndexSpec, build_shards
from xqg_ray.serve.local import free_port

GOALS_S = {"xquad_load": 5.0, "serve_stop_after_ctrl_c": 10.0, "gpu_check_refusal": 60.0}
SERVE_UP_LIMIT_S = 300


def time_xquad_load(data_dir: str, repeats: int) -> float:
    """Median seconds to load every shipped XQuAD language."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        load_xquad(data_dir)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@contextmanager
def serving(index: str, log_path: Path, port: int, limit_s: float = SERVE_UP_LIMIT_S):
    """`xqg-ray serve --index` in its own process group (its own local Ray, whatever RAY_ADDRESS
    says), output to `log_path`, yielded once it says it is up; killed if it still runs after."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "xqg_ray.cli", "serve", "--index", index, "--port", str(port)]
    with open(log_path, "w") as log:
        started = time.monotonic()
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            while "search service at" not in log_path.read_text():
                if process.poll() is not None or time.monotonic() - started > limit_s:
                    raise RuntimeError(f"xqg-ray serve did not come up:\n{log_path.read_text()}")
                time.sleep(0.2)
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)


def time_serve(workdir: Path, n: int) -> tuple[float, float]:
    """(seconds to come up, seconds to exit after SIGINT) of `xqg-ray serve` on a fresh index."""
    index = str(workdir / "index")
    vectors = np.random.default_rng(0).standard_normal((n, 64)).astype(np.float32)
    build_shards(vectors, np.arange(n), index, IndexSpec(shards=4))
    started = time.monotonic()
    with serving(index, workdir / "serve.log", free_port()) as process:
        up = time.monotonic() - started
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
        return up, time.monotonic() - interrupted


def gpu_check_without_a_gpu(out: Path, timeout_s: float = 300) -> subprocess.CompletedProcess:
    """`python -m xqg_ray.bench.gpu_check --out OUT` with no GPU visible (it must refuse)."""
    return subprocess.run(
        [sys.executable, "-m", "xqg_ray.bench.gpu_check", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )


def time_gpu_check_refusal(workdir: Path) -> float:
    """Seconds for the GPU check to refuse when no GPU is visible."""
    started = time.perf_counter()
    done = gpu_check_without_a_gpu(workdir / "gpu.json")
    if done.returncode != 2:
        raise RuntimeError(f"gpu_check did not refuse (exit {done.returncode}):\n{done.stderr}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="XQuAD folder (default: shipped data)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=20_000, help="vectors in the served index")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir("xquad")
    with tempfile.TemporaryDirectory(prefix="xqg-responsiveness-") as folder:
        workdir = Path(folder)
        seconds = {"xquad_load": time_xquad_load(data_dir, args.repeats)}
        seconds["serve_up"], seconds["serve_stop_after_ctrl_c"] = time_serve(workdir, args.n)
        seconds["gpu_check_refusal"] = time_gpu_check_refusal(workdir)
    report = {
        "machine": machine_info(),
        "seconds": {key: round(value, 2) for key, value in seconds.items()},
        "goals_s": GOALS_S,
        "met": {key: seconds[key] < goal for key, goal in GOALS_S.items()},
    }
    rows = [[key, seconds[key], GOALS_S.get(key), report["met"].get(key)] for key in seconds]
    print(report["machine"]["label"])
    print(format_table(["what", "seconds", "goal (s)", "met"], rows))
    if args.out:
        print(f"wrote {write_results(args.out, report)}")
    return report


if __name__ == "__main__":
    main()
