"""Evaluate every strategy in every configured cross-lingual setting (after build_index.py).

    python jobs/evaluate.py --config jobs/configs/evaluate-xquad.yaml
    ray job submit --working-dir . -- \
        python jobs/evaluate.py --config jobs/configs/evaluate-xquad.yaml

Reads the indices and query embeddings that `jobs/build_index.py` wrote for the same config (it
never builds them: a missing one is an error naming it), builds the per-language subset indices a
setting needs from the stored entries, searches offline on Ray Data and/or through the Serve
endpoint (`evaluate.via`), and writes runs, per-query scores, metrics.json per setting and
evaluation.json / evaluation.md under `<root>/results/<experiment>/`. With `tuning.dev_fraction`
> 0 the metrics are on test queries only, and xqg's alpha and reduce are chosen on the dev ones
(`xqg_tuning.json`); with `cost.enabled`, the cost and query-time probes run too; then the
research report (`report.md`) is written.
"""

from __future__ import annotations

import argparse

import _bootstrap  # noqa: F401  (puts the repo root on sys.path)

from xqg_ray.cli import run_job
from xqg_ray.config import load_config
from xqg_ray.evaluate.driver import evaluate_settings
from xqg_ray.evaluate.tables import evaluation_markdown
from xqg_ray.paths import RunPaths
from xqg_ray.report import study
from xqg_ray.report.render import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", required=True, help="YAML run config")
    parser.add_argument("--set", "-s", action="append", default=[], help="key.path=value")
    args = parser.parse_args()
    cfg = run_job(lambda: load_config(args.config, args.set))
    evaluation = run_job(lambda: evaluate_settings(cfg))
    print(evaluation_markdown(evaluation))
    tuning = run_job(lambda: study.tune(cfg))
    if tuning:
        print(f"xqg on dev: {tuning['chosen']}; test results in xqg_tuning.json")
    if cfg.cost.enabled:
        run_job(lambda: study.measure_costs(cfg, print))
    print(f"report: {run_job(lambda: write_report(cfg.root, cfg.evaluate.experiment))}")
    print(f"results: {RunPaths(cfg.root).results(cfg.evaluate.experiment)}")


if __name__ == "__main__":
    main()
