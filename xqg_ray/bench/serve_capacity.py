"""Load held: the highest sustained QPS with p99 under a target, per replicas-per-shard setting.

Builds a random-vector index (100k x 128 in 4 shards by default), deploys the search service on
127.0.0.1, and steps the client concurrency upward (closed loop, one query per request, each
step capped at `--step-duration-s`). A step is *sustained* when no request failed or came back
partial and p99 < `--p99-target-ms`; the capacity of a setting is the best QPS of a sustained
step. Stepping stops at the first step over the target (more load only queues). Ray and Serve
take the machine's CPUs as they are: the figures are for this machine and its load average,
which the JSON records before and after every step.

    python -m xqg_ray.bench.serve_capacity --out results/serve_capacity.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile

import numpy as np
import ray
from ray import serve

from xqg_ray.bench.harness import format_table, machine_info, parse_ints, write_results
from xqg_ray.bench.load import HOST, http_load, in_process
from xqg_ray.index.shards import IndexSpec, build_shards
from xqg_ray.ray_start import start_ray
from xqg_ray.serve.app import build_app
from xqg_ray.serve.config import ServeConfig
from xqg_ray.serve.local import free_port

APP = "serve-capacity-bench"


def step_up(url: str, queries: np.ndarray, args: argparse.Namespace, replicas: int) -> list[dict]:
    """One row per concurrency step, until a step misses the p99 target."""
    rows = []
    for concurrency in args.concurrency:
        load_before = os.getloadavg()
        stats, failures = asyncio.run(
            http_load(url, queries, args.k, concurrency, args.step_duration_s)
        )
        sustained = failures == 0 and stats["p99_ms"] < args.p99_target_ms
        row = {
            "replicas_per_shard": replicas,
            "concurrency": concurrency,
            **stats,
            "failed_or_partial": failures,
            "sustained": sustained,
            "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
        }
        rows.append(row)
        print(
            f"replicas={replicas} c={concurrency:<3} qps={stats['qps']:<7} "
            f"p50={stats['p50_ms']:.1f} p99={stats['p99_ms']:.1f} ms failures={failures} "
            f"{'ok' if sustained else 'OVER'} load={row['load_average_after'][0]:.2f}",
            flush=True,
        )
        if not sustained:
            break
    return rows


def run(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(0)
    workdir = tempfile.mkdtemp(prefix="xqg-serve-capacity-")
    index_url = f"{workdir}/index"
    vectors = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    build_shards(
        vectors, np.arange(args.n, dtype=np.int64), index_url, IndexSpec(shards=args.shards)
    )
    del vectors
    queries = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    baseline = in_process(index_url, queries[:500], args.k)
    result = {
        "benchmark": "serve_capacity",
        "machine": machine_info(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "in_process_single_thread": baseline,
        "steps": [],
        "capacity": {},
    }
    start_ray(num_cpus=os.cpu_count())
    port = free_port()
    serve.start(http_options={"host": HOST, "port": port})
    try:
        for replicas in args.replicas:
            cfg = ServeConfig(
                index=index_url,
                port=port,
                replicas_per_shard=replicas,
                shards_per_replica=args.shards_per_replica,
                shard_num_cpus=args.shard_num_cpus,
                router_num_cpus=args.shard_num_cpus,
                max_batch_size=args.max_batch_size,
            )
            serve.run(build_app(cfg), name=APP, route_prefix="/capacity")
            url = f"http://{HOST}:{port}/capacity/search_vectors"
            asyncio.run(http_load(url, queries[:50], args.k, 2, 60))  # warm-up
            rows = step_up(url, queries, args, replicas)
            result["steps"] += rows
            held = [row for row in rows if row["sustained"]]
            best = max(held, key=lambda row: row["qps"]) if held else None
            result["capacity"][str(replicas)] = (
                {k: best[k] for k in ("qps", "concurrency", "p50_ms", "p99_ms")} if best else None
            )
            serve.delete(APP)
            if args.out:
                write_results(args.out, result)
    finally:
        serve.shutdown()
        ray.shutdown()
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="", help="Where to write the JSON results.")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--replicas", type=parse_ints, default=[1, 2])
    parser.add_argument(
        "--shards-per-replica",
        type=int,
        default=None,
        help="Shard-group size (default: the service's layout; 1: a deployment per shard).",
    )
    parser.add_argument("--concurrency", type=parse_ints, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--step-duration-s", type=float, default=10.0)
    parser.add_argument("--queries", type=int, default=6000, help="Distinct queries (a cap).")
    parser.add_argument("--p99-target-ms", type=float, default=100.0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--shard-num-cpus", type=float, default=0.1)
    parser.add_argument("--max-batch-size", type=int, default=16)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    if args.out:
        print(f"wrote {write_results(args.out, result)}")
    headers = ["replicas", "conc", "qps", "p50 ms", "p99 ms", "failed", "held", "load 1m"]
    print(
        format_table(
            headers,
            [
                [
                    r["replicas_per_shard"],
                    r["concurrency"],
                    r["qps"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["failed_or_partial"],
                    "yes" if r["sustained"] else "no",
                    r["load_average_after"][0],
                ]
                for r in result["steps"]
            ],
        )
    )
    print("capacity (best sustained step per replicas setting):", result["capacity"])
    return result


if __name__ == "__main__":
    main()
