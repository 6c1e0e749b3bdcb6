"""Throughput and latency sweeps of a built run, then its report (report/render.py).

    python jobs/sweep.py --config jobs/configs/sweep-demo.yaml
    python jobs/sweep.py --config jobs/configs/sweep-demo.yaml --set sweeps.search.concurrency=[1]
    ray job submit --working-dir . -- python jobs/sweep.py --config jobs/configs/sweep-gpu.yaml

The sweep YAML names the run (`run.config`), which must be built (jobs/build_index.py) and, for
the effectiveness columns, evaluated (jobs/evaluate.py). Rows go to CSV and JSON under
`<root>/results/<experiment>/sweep/` (or --out); the report to `<root>/results/<experiment>/`.
"""

from __future__ import annotations

import argparse

import _bootstrap  # noqa: F401  (puts the repo root on sys.path)

from xqg_ray.bench.sweep import SWEEPS, load_sweep_config, run_sweeps
from xqg_ray.cli import run_job
from xqg_ray.config import load_config
from xqg_ray.report.render import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", required=True, help="sweep YAML")
    parser.add_argument("--set", "-s", action="append", default=[], help="key.path=value")
    parser.add_argument("--out", default=None, help="results folder (default: the run's)")
    parser.add_argument("--only", action="append", choices=SWEEPS, help="run only these sweeps")
    parser.add_argument("--no-report", action="store_true", help="skip writing report.md")
    args = parser.parse_args()
    sweep = run_job(lambda: load_sweep_config(args.config, args.set))
    run_job(lambda: run_sweeps(sweep, args.out, args.only))
    if not args.no_report and args.out is None:
        run = run_job(lambda: load_config(sweep.run.config, sweep.run.set))
        experiment = sweep.experiment or run.evaluate.experiment
        print(f"report: {run_job(lambda: write_report(run.root, experiment))}")


if __name__ == "__main__":
    main()
