"""Search-service latency and throughput against in-process FAISS over the same index.

For every index (synthetic random vectors at several shard counts, and/or given indexes such as
each strategy's index of a run root) and every replicas-per-shard setting, the script deploys the
service on 127.0.0.1, sends a bounded number of `/search_vectors` requests at each concurrency
(one query per request, fixed count, optional time cap), and searches the same queries with
`ShardedSearcher` in this process. It reports p50/p95/p99 and QPS, the p50 ratio service /
in-process, and whether p50 <= 1.5 x in-process + 2 ms (the issue's target), as a table and JSON.

    python -m xqg_ray.bench.serve_latency --out results/serve_latency.json --shards 1,4
    python -m xqg_ray.bench.serve_latency --out r.json --run-root runs/demo --replicas 1,2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Callable

import aiohttp
import faiss
import numpy as np
import ray
from ray import serve

from xqg_ray import storage
from xqg_ray.bench.harness import format_table, machine_info, write_results
from xqg_ray.index.search import ShardedSearcher
from xqg_ray.index.shards import MANIFEST_FILE, build_shards, load_manifest
from xqg_ray.serve.app import build_app, free_port
from xqg_ray.serve.config import ServeConfig

HOST = "127.0.0.1"  # loopback only, by design: this script never sends traffic elsewhere
APP = "serve-latency-bench"


def summarize(latencies_ms: list[float], wall_s: float) -> dict:
    p50, p95, p99 = np.percentile(latencies_ms, [50, 95, 99])
    return {
        "requests": len(latencies_ms),
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "p99_ms": round(float(p99), 3),
        "mean_ms": round(float(np.mean(latencies_ms)), 3),
        "qps": round(len(latencies_ms) / wall_s, 1),
    }


def synthetic_indexes(n: int, dim: int, shard_counts: list[int], workdir: str) -> list[dict]:
    """Random unit vectors (as a normalising encoder makes), one Flat index per shard count."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    indexes = []
    for shards in shard_counts:
        url = os.path.join(workdir, f"random-{n}x{dim}-{shards}shards")
        build_shards(vectors, np.arange(n, dtype=np.int64), url, n_shards=shards)
        indexes.append({"label": f"random {n}x{dim}", "url": url})
    return indexes


def run_root_indexes(root: str) -> list[dict]:
    """Every `index/<encoder>/<strategy>` of a run root that has a manifest."""
    fs, path = storage.url_to_fs(storage.join(root, "index"))
    found = sorted(fs.glob(path.rstrip("/") + f"/*/*/{MANIFEST_FILE}"))
    indexes = []
    for manifest_path in found:
        relative = manifest_path[len(path.rstrip("/")) + 1 :].rsplit("/", 1)[0]
        indexes.append({"label": relative, "url": storage.join(root, "index", relative)})
    return indexes


def in_process(index_url: str, queries: np.ndarray, k: int) -> dict:
    """The same queries, one per call, through ShardedSearcher in this process.

    One FAISS thread, as in each shard replica: OpenMP threads spinning on a busy machine would
    make the baseline slower than the search it measures.
    """
    faiss.omp_set_num_threads(1)
    searcher = ShardedSearcher(index_url)
    for query in queries[:20]:  # warm caches and mmapped pages
        searcher.search(query[None, :], k)
    latencies = []
    started = time.perf_counter()
    for query in queries:
        begin = time.perf_counter()
        searcher.search(query[None, :], k)
        latencies.append((time.perf_counter() - begin) * 1000)
    return summarize(latencies, time.perf_counter() - started)


async def healthz_floor(url: str, count: int = 100) -> dict:
    """Latency of GET /healthz: the HTTP proxy and router hops alone, no shard work."""
    latencies = []
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        for _ in range(count):
            begin = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
            latencies.append((time.perf_counter() - begin) * 1000)
    return summarize(latencies, time.perf_counter() - started)


async def http_load(
    url: str, queries: np.ndarray, k: int, concurrency: int, max_duration_s: float
) -> tuple[dict, int]:
    """Send each query once (`concurrency` at a time, stop early at the time cap)."""
    bodies = [json.dumps({"vectors": [q.tolist()], "k": k}) for q in queries]
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    failures = 0
    next_request = 0
    deadline = time.perf_counter() + max_duration_s

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_request, failures
        while next_request < len(bodies) and time.perf_counter() < deadline:
            body = bodies[next_request]
            next_request += 1
            begin = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.json()
                if response.status != 200 or answer.get("partial"):
                    failures += 1
                    continue
            latencies.append((time.perf_counter() - begin) * 1000)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return summarize(latencies, wall), failures


def bench_index(
    index: dict, args: argparse.Namespace, port: int, record: Callable[[dict], None]
) -> None:
    manifest = load_manifest(index["url"])
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((args.requests, manifest["dimension"])).astype(np.float32)
    baseline = in_process(index["url"], queries, args.k)
    for replicas in args.replicas:
        needed = len(manifest["shards"]) * replicas * args.shard_num_cpus + args.router_num_cpus
        available = ray.cluster_resources().get("CPU", 0.0)  # Serve itself takes no CPU
        if needed > available + 1e-9:  # Serve would wait forever for replicas it cannot place
            raise SystemExit(
                f"{index['label']}: {len(manifest['shards'])} shards x {replicas} replicas need "
                f"{needed:.2f} CPUs, Ray has {available:.2f}: lower --shard-num-cpus"
            )
        cfg = ServeConfig(
            index=index["url"],
            port=port,
            replicas_per_shard=replicas,
            shard_num_cpus=args.shard_num_cpus,
            router_num_cpus=args.router_num_cpus,
            max_batch_size=args.max_batch_size,
        )
        serve.run(build_app(cfg), name=APP, route_prefix="/bench")
        url = f"http://{HOST}:{port}/bench/search_vectors"
        asyncio.run(http_load(url, queries[:20], args.k, 1, 60))  # warm-up
        floor = asyncio.run(healthz_floor(f"http://{HOST}:{port}/bench/healthz"))
        for concurrency in args.concurrency:
            service, failures = asyncio.run(
                http_load(url, queries, args.k, concurrency, args.max_duration_s)
            )
            target_ms = 1.5 * baseline["p50_ms"] + 2.0
            record(
                {
                    "index": index["label"],
                    "shards": len(manifest["shards"]),
                    "n_total": manifest["n_total"],
                    "replicas_per_shard": replicas,
                    "concurrency": concurrency,
                    "service": service,
                    "failed_or_partial": failures,
                    "in_process": baseline,
                    "healthz": floor,
                    "p50_ratio": round(service["p50_ms"] / baseline["p50_ms"], 2),
                    "target_p50_ms": round(target_ms, 3),
                    "meets_target": service["p50_ms"] <= target_ms,
                }
            )
        serve.delete(APP)


def format_row(row: dict) -> str:
    s, b = row["service"], row["in_process"]
    return (
        f"{row['index']:<28} shards={row['shards']} replicas={row['replicas_per_shard']} "
        f"c={row['concurrency']:<3} service p50/p95/p99={s['p50_ms']:.2f}/{s['p95_ms']:.2f}/"
        f"{s['p99_ms']:.2f} ms qps={s['qps']:<7} | in-process p50={b['p50_ms']:.3f} ms "
        f"qps={b['qps']:<8} | healthz p50={row['healthz']['p50_ms']:.2f} ms | "
        f"ratio={row['p50_ratio']} target<={row['target_p50_ms']:.2f} ms "
        f"{'met' if row['meets_target'] else 'MISSED'}"
    )


def summary_table(rows: list[dict]) -> str:
    headers = ["index", "shards", "replicas", "conc", "p50 ms", "p95 ms", "p99 ms", "qps"]
    headers += ["in-proc p50", "healthz p50", "ratio", "target ms", "met"]
    return format_table(
        headers,
        [
            [
                r["index"],
                r["shards"],
                r["replicas_per_shard"],
                r["concurrency"],
                r["service"]["p50_ms"],
                r["service"]["p95_ms"],
                r["service"]["p99_ms"],
                r["service"]["qps"],
                r["in_process"]["p50_ms"],
                r["healthz"]["p50_ms"],
                r["p50_ratio"],
                r["target_p50_ms"],
                "yes" if r["meets_target"] else "no",
            ]
            for r in rows
        ],
    )


def parse_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="Where to write the JSON results.")
    parser.add_argument("--index", action="append", default=[], help="An index URL (repeatable).")
    parser.add_argument("--run-root", default="", help="Benchmark every index of this run root.")
    parser.add_argument("--n", type=int, default=20_000, help="Synthetic index size.")
    parser.add_argument("--dim", type=int, default=128, help="Synthetic vector dimension.")
    parser.add_argument("--shards", type=parse_ints, default=[1, 4], help="Synthetic shard counts.")
    parser.add_argument("--no-synthetic", action="store_true", help="Only the given indexes.")
    parser.add_argument("--replicas", type=parse_ints, default=[1, 2])
    parser.add_argument("--concurrency", type=parse_ints, default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=300, help="Requests per measurement.")
    parser.add_argument("--max-duration-s", type=float, default=60.0, help="Cap per measurement.")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--shard-num-cpus", type=float, default=0.1)
    parser.add_argument("--router-num-cpus", type=float, default=0.1)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--address", default="", help="Ray cluster to use (default: a new one).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="xqg-serve-bench-")
    indexes = [{"label": url, "url": url} for url in args.index]
    if args.run_root:
        indexes += run_root_indexes(args.run_root)
    if not args.no_synthetic:
        indexes += synthetic_indexes(args.n, args.dim, args.shards, workdir)
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:  # a fresh local Ray: never join another cluster running on this machine by accident
        ray.init(
            address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False
        )
    result = {
        "benchmark": "serve_latency",
        "machine": machine_info(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": [],
    }

    def record(row: dict) -> None:  # rewrite the file after every row: a crash keeps the rest
        result["rows"].append(row)
        result["machine"]["load_average_at_end"] = list(os.getloadavg())
        write_results(args.out, result)
        print(format_row(row), flush=True)

    port = free_port()
    serve.start(http_options={"host": HOST, "port": port})
    try:
        for index in indexes:
            bench_index(index, args, port, record)
    finally:
        serve.shutdown()
        ray.shutdown()
    print("\n" + summary_table(result["rows"]))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
