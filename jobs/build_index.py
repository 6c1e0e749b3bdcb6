"""Build every configured strategy's index: ingest, generate, encode, augment, index.

    python jobs/build_index.py --config jobs/configs/xquad.yaml
    ray job submit --working-dir . -- python jobs/build_index.py --config jobs/configs/xquad.yaml

On a cluster `ray.init()` joins it (RAY_ADDRESS is set by `ray job submit`); locally it starts
Ray. Rerunning resumes: only parts that are not yet committed are computed.
"""

from __future__ import annotations

import argparse
import json

import _bootstrap  # noqa: F401  (puts the repo root on sys.path)

from xqg_ray.cli import run_job
from xqg_ray.config import load_config
from xqg_ray.stages.pipeline import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", required=True, help="YAML run config")
    parser.add_argument("--set", "-s", action="append", default=[], help="key.path=value")
    args = parser.parse_args()
    report = run_job(lambda: build(load_config(args.config, args.set)))
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
