"""Search-service latency and throughput beside their floors, in one run.

For each index (synthetic random unit vectors, 20k x 128 in 4 shards by default; with `--large`,
1M x 384 Flat and IVF-PQ; or given indexes) the script measures, side by side, with the same
requests (`/search_vectors`, one query per request, k = 10) at each concurrency (1 and 16):

- floor apps: trivial Serve applications of the service's topologies, doing no search:
  `floor-1hop` (HTTP -> one replica: the topology of `search_in_router`) and `floor-router-N`
  (HTTP -> router -> N replicas, N = the shard deployments of a layout);
- the service in its layouts: `default` (a small index in the router; a bigger one in as few
  shard groups as memory allows), `one-group` (`search_in_router: false`: router -> shard groups
  as memory allows), `per-shard` (`shards_per_replica: 1`);
- in-process FAISS: the same shard-group search in this process, one query per call
  (concurrency 1) and in batches of the concurrency (the best a service could do).

Every figure is p50/p95/p99 and QPS; a layout's target is p50 <= its topology's floor + 2 ms. The
JSON has one row per (index, system, concurrency). Serve's throughput settings are chosen with
`--serve-env` (environment variables for the Ray this script starts).

    python -m xqg_ray.bench.serve_latency --out results/serve_latency.json
    python -m xqg_ray.bench.serve_latency --out r.json --large --no-synthetic
    python -m xqg_ray.bench.serve_latency --out r.json --serve-env RAY_SERVE_THROUGHPUT_OPTIMIZED=1
"""

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Callable

import numpy as np
import ray
from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from xqg_ray import storage
from xqg_ray.bench.harness import format_table, machine_info, parse_ints, write_results
from xqg_ray.bench.load import HOST, http_load, in_process
from xqg_ray.index.shard_group import ShardGroup
from xqg_ray.index.shards import MANIFEST_FILE, IndexSpec, build_shards, load_manifest
from xqg_ray.latency import latency_summary
from xqg_ray.ray_start import start_ray
from xqg_ray.serve.app import build_app, plan
from xqg_ray.serve.config import ServeConfig
from xqg_ray.serve.local import free_port
from xqg_ray.serve.schemas import VectorSearchRequest

APP = "serve-latency-bench"
LAYOUTS = {
    "default": {},  # a small index: in the router; a bigger one: groups as memory allows
    "one-group": {"search_in_router": False},
    "per-shard": {"shards_per_replica": 1},
}


def synthetic_indexes(n: int, dim: int, shard_counts: list[int], workdir: str) -> list[dict]:
    """Random unit vectors (as a normalising encoder makes), one Flat index per shard count."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    indexes = []
    for shards in shard_counts:
        url = os.path.join(workdir, f"random-{n}x{dim}-{shards}shards")
        build_shards(vectors, np.arange(n, dtype=np.int64), url, IndexSpec(shards=shards))
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


def in_process_group(index_url: str, queries: np.ndarray, k: int, batch: int) -> dict:
    """The service's own shard-group search (parallel threads over shards) in this process, in
    batches of `batch` queries; latency is per batch, QPS counts queries."""
    manifest = load_manifest(index_url)
    group = ShardGroup(index_url, manifest, list(range(len(manifest["shards"]))), None, True)
    for start in range(0, min(len(queries), 20 * batch), batch):  # warm caches, mmapped pages
        group.search(queries[start : start + batch], k)
    latencies = []
    started = time.perf_counter()
    for start in range(0, len(queries), batch):
        begin = time.perf_counter()
        group.search(queries[start : start + batch], k)
        latencies.append((time.perf_counter() - begin) * 1000)
    wall = time.perf_counter() - started
    stats = latency_summary(latencies, wall)
    stats["qps"] = round(len(queries) / wall, 1)  # queries, not calls: batches of `batch`
    stats["requests"] = len(queries)
    return stats


# ---- floor apps: the service's topologies doing no search ---------------------------------------

floor_api = FastAPI()
FIXED_ANSWER = {"results": [[{"id": 0, "pid": None, "score": 0.0}]], "partial": False}


@serve.deployment(max_ongoing_requests=128)
@serve.ingress(floor_api)
class FloorOneHop:
    """HTTP -> one replica: parses the request as the router does, answers a fixed result."""

    @floor_api.post("/search_vectors")
    async def search_vectors(self, body: VectorSearchRequest) -> dict:
        np.asarray(body.vectors, dtype=np.float32)
        return FIXED_ANSWER


@serve.deployment(max_ongoing_requests=64)
class FloorLeaf:
    async def search(self, vectors: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((len(vectors), depth), np.float32), np.zeros(
            (len(vectors), depth), np.int64
        )


router_api = FastAPI()


@serve.deployment(max_ongoing_requests=128)
@serve.ingress(router_api)
class FloorRouter:
    """HTTP -> router -> N replicas concurrently, as the service scatters over shard groups."""

    def __init__(self, leaves: list[DeploymentHandle]):
        self.leaves = leaves

    @router_api.post("/search_vectors")
    async def search_vectors(self, body: VectorSearchRequest) -> dict:
        vectors = np.asarray(body.vectors, dtype=np.float32)
        await asyncio.gather(*(leaf.search.remote(vectors, body.k) for leaf in self.leaves))
        return FIXED_ANSWER


def floor_app(leaves: int, cpus: dict):
    if leaves == 0:
        return FloorOneHop.options(ray_actor_options={"num_cpus": cpus["router"]}).bind()
    handles = [
        FloorLeaf.options(name=f"leaf-{n}", ray_actor_options={"num_cpus": cpus["shard"]}).bind()
        for n in range(leaves)
    ]
    return FloorRouter.options(ray_actor_options={"num_cpus": cpus["router"]}).bind(handles)


# ---- measurements ------------------------------------------------------------------------------


def replica_memory(app: str) -> dict[str, dict]:
    """RSS, PSS, private and anonymous memory (MiB) of each replica process of `app` on this
    node, from /proc: memory-mapped shard pages count in RSS (and in private while one process
    maps them) but not in anonymous memory, which is the replica's own heap."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                title = handle.read().split(b"\0")[0].decode(errors="replace")
            if not title.startswith(f"ray::ServeReplica:{app}:"):
                continue
            fields = {}
            with open(f"/proc/{entry}/smaps_rollup") as handle:
                for line in handle:
                    parts = line.split()
                    if len(parts) >= 2 and parts[1].isdigit():
                        fields[parts[0].rstrip(":")] = int(parts[1]) / 1024
        except OSError:
            continue
        deployment = title[len(f"ray::ServeReplica:{app}:") :].split(".")[0]
        private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
        found[f"{deployment}/{entry}"] = {
            "rss_mib": round(fields.get("Rss", 0), 1),
            "pss_mib": round(fields.get("Pss", 0), 1),
            "private_mib": round(private, 1),  # includes mapped shard pages no one else maps
            "anonymous_mib": round(fields.get("Anonymous", 0), 1),  # heap: not shareable
        }
    return found


def measure_http(url: str, queries: np.ndarray, args: argparse.Namespace) -> dict[int, dict]:
    asyncio.run(http_load(url, queries[:30], args.k, 1, 60))  # warm-up
    out = {}
    for concurrency in args.concurrency:
        stats, failures = asyncio.run(
            http_load(url, queries, args.k, concurrency, args.max_duration_s)
        )
        out[concurrency] = {**stats, "failed_or_partial": failures}
    return out


def compare_index(
    index: dict, args: argparse.Namespace, port: int, record: Callable[[dict], None]
) -> None:
    """Floors, service layouts and in-process FAISS for one index, one row each per concurrency."""
    manifest = load_manifest(index["url"])
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((args.requests, manifest["dimension"])).astype(np.float32)
    base = {
        "index": index["label"],
        "shards": len(manifest["shards"]),
        "n_total": manifest["n_total"],
    }
    base["factory"] = manifest["factory"]

    def row(system: str, topology: str, concurrency: int, stats: dict, **extra) -> None:
        record(
            {
                **base,
                "system": system,
                "topology": topology,
                "concurrency": concurrency,
                **stats,
                **extra,
            }
        )

    single = in_process(index["url"], queries, args.k)
    row("in-process", "none", 1, single, mode="one query per call")
    for concurrency in args.concurrency:
        if concurrency > 1:
            batched = in_process_group(index["url"], queries, args.k, concurrency)
            row("in-process", "none", concurrency, batched, mode=f"batches of {concurrency}")

    floors: dict[str, dict[int, dict]] = {}
    layouts = {}
    for name in args.layouts:
        cfg = ServeConfig(
            index=index["url"], port=port, max_batch_size=args.max_batch_size, **LAYOUTS[name]
        )
        layouts[name] = (cfg, plan(cfg, manifest))
    cpus = {"router": ServeConfig(index="x").router_num_cpus, "shard": 0.25}
    for name, (_, layout) in layouts.items():
        topology = "floor-1hop" if layout.search_in_router else f"floor-router-{len(layout.groups)}"
        layouts[name] = (layouts[name][0], layout, topology)
        if topology in floors:
            continue
        leaves = 0 if layout.search_in_router else len(layout.groups)
        serve.run(floor_app(leaves, cpus), name=APP, route_prefix="/floor")
        floors[topology] = measure_http(f"http://{HOST}:{port}/floor/search_vectors", queries, args)
        serve.delete(APP)
        for concurrency, stats in floors[topology].items():
            row("floor", topology, concurrency, stats)

    for name, (cfg, layout, topology) in layouts.items():
        serve.run(build_app(cfg), name=APP, route_prefix="/bench")
        results = measure_http(f"http://{HOST}:{port}/bench/search_vectors", queries, args)
        memory = replica_memory(APP)
        serve.delete(APP)
        for concurrency, stats in results.items():
            floor_p50 = floors[topology][concurrency]["p50_ms"]
            row(
                f"service {name}",
                topology,
                concurrency,
                stats,
                groups=len(layout.groups) or 1,
                floor_p50_ms=floor_p50,
                over_floor_ms=round(stats["p50_ms"] - floor_p50, 3),
                meets_floor_target=stats["p50_ms"] <= floor_p50 + 2.0,
                replica_memory=memory,
            )


def summary_table(rows: list[dict]) -> str:
    headers = ["index", "system", "topology", "conc", "p50 ms", "p95 ms", "p99 ms", "qps"]
    headers += ["floor p50", "<= floor+2"]
    return format_table(
        headers,
        [
            [
                r["index"],
                r["system"],
                r["topology"],
                r["concurrency"],
                r["p50_ms"],
                r["p95_ms"],
                r["p99_ms"],
                r["qps"],
                r.get("floor_p50_ms"),
                {True: "yes", False: "no"}.get(r.get("meets_floor_target")),
            ]
            for r in rows
        ],
    )


def large_indexes(workdir: str, n: int, dim: int, kinds: list[str]) -> list[dict]:
    """1M x 384 (by default) Flat and/or IVF-PQ, 4 shards each, built from one random matrix."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    indexes = []
    for label, factory, params in (
        ("flat", "Flat", ""),
        ("ivfpq", f"IVF1024,PQ{dim // 8}", "nprobe=16"),
    ):
        if label not in kinds:
            continue
        url = os.path.join(workdir, f"random-{n}x{dim}-{label}")
        build_shards(
            vectors,
            ids,
            url,
            IndexSpec(shards=4, factory=factory, train_sample=50_000, search_params=params),
        )
        indexes.append({"label": f"random {n}x{dim} {label}", "url": url})
    return indexes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="Where to write the JSON results.")
    parser.add_argument("--index", action="append", default=[], help="An index URL (repeatable).")
    parser.add_argument("--run-root", default="", help="Benchmark every index of this run root.")
    parser.add_argument("--n", type=int, default=20_000, help="Synthetic index size.")
    parser.add_argument("--dim", type=int, default=128, help="Synthetic vector dimension.")
    parser.add_argument("--shards", type=parse_ints, default=[4], help="Synthetic shard counts.")
    parser.add_argument("--no-synthetic", action="store_true", help="Only the given indexes.")
    parser.add_argument(
        "--large", action="store_true", help="Add 1M x 384 Flat and IVF-PQ (4 shards each)."
    )
    parser.add_argument("--large-n", type=int, default=1_000_000)
    parser.add_argument("--large-dim", type=int, default=384)
    parser.add_argument(
        "--large-kinds", type=lambda t: [p for p in t.split(",") if p], default=["flat", "ivfpq"]
    )
    parser.add_argument(
        "--layouts", type=lambda t: [p for p in t.split(",") if p], default=list(LAYOUTS)
    )
    parser.add_argument("--concurrency", type=parse_ints, default=[1, 16])
    parser.add_argument("--requests", type=int, default=400, help="Requests per measurement.")
    parser.add_argument("--max-duration-s", type=float, default=40.0, help="Cap per measurement.")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument(
        "--serve-env",
        action="append",
        default=[],
        help="NAME=VALUE for the Ray this script starts (e.g. RAY_SERVE_THROUGHPUT_OPTIMIZED=1).",
    )
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs Ray may use.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    for item in args.serve_env:
        key, _, value = item.partition("=")
        os.environ[key] = value  # before Ray starts: Serve's processes read them at start-up
    workdir = tempfile.mkdtemp(prefix="xqg-serve-bench-")
    indexes = [{"label": url, "url": url} for url in args.index]
    if args.run_root:
        indexes += run_root_indexes(args.run_root)
    if not args.no_synthetic:
        indexes += synthetic_indexes(args.n, args.dim, args.shards, workdir)
    if args.large:
        indexes += large_indexes(workdir, args.large_n, args.large_dim, args.large_kinds)
    start_ray(num_cpus=args.num_cpus)
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
        print(
            f"{row['index']:<24} {row['system']:<18} {row['topology']:<16} "
            f"c={row['concurrency']:<3} p50={row['p50_ms']:.2f} p99={row['p99_ms']:.2f} ms "
            f"qps={row['qps']}",
            flush=True,
        )

    port = free_port()
    serve.start(http_options={"host": HOST, "port": port})
    try:
        for index in indexes:
            compare_index(index, args, port, record)
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)  # the synthetic indexes (1.5 GB at 1M x 384)
    print("\n" + summary_table(result["rows"]))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
