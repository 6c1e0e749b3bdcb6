"""Faults under load: shard replicas killed while a bounded client hammers the search service.

The script builds a random-vector index, deploys the service on 127.0.0.1, and sends a fixed
number of `/search_vectors` requests (`--concurrency` at a time, capped by `--max-duration-s`).
After `--kill-after` of them have been sent, it kills a replica holding a random shard (its shard
group's; a router replica when the router holds the shards), `--kills` times, spaced by
`--kill-every`. Every answer is classified against the exact
answer of `InProcessIndex` in this process:

- succeeded: HTTP 200, not partial, and the same ids and scores as the exact search;
- partial: HTTP 200 with `partial: true` and the missing shards named (flagged, so allowed);
- failed: any other status, a transport error, or a complete-looking answer that is wrong
  (`wrong_unflagged` counts those separately: the one outcome the service must never produce).

    python -m xqg_ray.bench.serve_faults --out results/serve_faults.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import ray
from ray import serve

from xqg_ray.bench.harness import machine_info, write_results
from xqg_ray.bench.load import HOST
from xqg_ray.index.in_process import InProcessIndex
from xqg_ray.index.shards import IndexSpec, build_shards
from xqg_ray.latency import latency_summary
from xqg_ray.ray_start import start_ray
from xqg_ray.serve.config import ServeConfig
from xqg_ray.serve.local import free_port, run_server

APP = "serve-faults-bench"


@dataclass
class Tally:
    """Outcome counts and latencies of one load run."""

    sent: int = 0
    succeeded: int = 0
    partial: int = 0
    failed: int = 0
    wrong_unflagged: int = 0
    statuses: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    def record(self, outcome: str, status: int | str, latency_ms: float) -> None:
        self.statuses[str(status)] += 1
        self.latencies_ms.append(latency_ms)
        if outcome == "wrong":
            self.wrong_unflagged += 1
            self.failed += 1
        else:
            setattr(self, outcome, getattr(self, outcome) + 1)

    def summary(self, wall_s: float) -> dict:
        latency = latency_summary(self.latencies_ms)
        return {
            "sent": self.sent,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "flagged_partial": self.partial,
            "wrong_unflagged": self.wrong_unflagged,
            "statuses": dict(self.statuses),
            "p50_ms": latency["p50_ms"],
            "p99_ms": latency["p99_ms"],
            "wall_s": round(wall_s, 2),
        }


def classify(status: int, answer: dict, exact_ids: list[int], exact_scores: np.ndarray) -> str:
    """succeeded / partial / failed / wrong (a complete-looking answer that is not exact)."""
    if status != 200:
        return "failed"
    if answer.get("partial"):
        return "partial" if answer.get("missing_shards") else "wrong"
    (hits,) = answer["results"]
    ids = [hit["id"] for hit in hits]
    scores = np.array([hit["score"] for hit in hits], dtype=np.float32)
    exact = ids == exact_ids and np.allclose(scores, exact_scores, rtol=1e-4, atol=1e-5)
    return "succeeded" if exact else "wrong"


def holds_shard(deployment: str, shard: int) -> bool:
    """Whether a deployment named by `xqg_ray.serve.layout.group_name` holds `shard`."""
    parts = deployment.split("-")
    if parts[0] == "shard":
        return int(parts[1]) == shard
    if parts[0] == "shards":
        return int(parts[1]) <= shard <= int(parts[2])
    return False


def replica_names(app: str, shard: int | None) -> list[str]:
    """Live replicas of the deployment holding `shard` (None: the router's)."""
    prefix = f"SERVE_REPLICA::{app}#"
    names = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if not actor["name"].startswith(prefix):
            continue
        deployment = actor["name"][len(prefix) :].split("#")[0]
        if (deployment == "router") if shard is None else holds_shard(deployment, shard):
            names.append(actor["name"])
    return sorted(names)


def kill_replica(app: str, shard: int | None) -> str | None:
    """Kill one live replica holding `shard` (None: a router replica, for a layout whose
    router holds the shards); Serve's controller starts a replacement."""
    names = replica_names(app, shard)
    if not names:
        return None
    name = random.choice(names)
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    return name


async def load_with_kills(
    url: str, queries: np.ndarray, exact: tuple[np.ndarray, np.ndarray], args, n_shards: int
) -> tuple[Tally, list[dict], float]:
    """Send every query once, kill replicas on schedule; returns the tally, kills, wall time."""
    tally = Tally()
    kills: list[dict] = []
    exact_scores, exact_ids = exact
    headers = {"Content-Type": "application/json"}
    deadline = time.perf_counter() + args.max_duration_s
    kill_at = [int(args.kill_after * len(queries)) + i * args.kill_every for i in range(args.kills)]
    timeout = aiohttp.ClientTimeout(total=args.request_timeout_s)

    async def maybe_kill() -> None:
        while kill_at and tally.sent >= kill_at[0]:
            kill_at.pop(0)
            shard = None if args.search_in_router else random.randrange(n_shards)
            name = await asyncio.to_thread(kill_replica, APP, shard)
            kills.append({"after_sent": tally.sent, "shard": shard, "replica": name})

    async def worker(session: aiohttp.ClientSession) -> None:
        while tally.sent < len(queries) and time.perf_counter() < deadline:
            row = tally.sent
            tally.sent += 1
            await maybe_kill()
            body = json.dumps({"vectors": [queries[row].tolist()], "k": args.k})
            begin = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    status = response.status
                    answer = await response.json(content_type=None)
                outcome = classify(
                    status, answer, exact_ids[row][exact_ids[row] >= 0].tolist(), exact_scores[row]
                )
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                status, outcome = type(exc).__name__, "failed"
            tally.record(outcome, status, (time.perf_counter() - begin) * 1000)

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
        wall = time.perf_counter() - started
    return tally, kills, wall


def run(args: argparse.Namespace) -> dict:
    """Build the index, deploy, load with kills, tear down; returns the result dict."""
    rng = np.random.default_rng(args.seed)
    random.seed(args.seed)
    workdir = tempfile.mkdtemp(prefix="xqg-serve-faults-")
    vectors = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    index_url = f"{workdir}/index"
    build_shards(
        vectors, np.arange(args.n, dtype=np.int64), index_url, IndexSpec(shards=args.shards)
    )
    queries = rng.standard_normal((args.requests, args.dim)).astype(np.float32)
    exact = InProcessIndex(index_url).search(queries, args.k)

    started_ray = start_ray(num_cpus=os.cpu_count())  # local unless RAY_ADDRESS asks to join
    cfg = ServeConfig(
        index=index_url,
        host=HOST,
        port=free_port(),
        app_name=APP,
        route_prefix="/faults",
        replicas_per_shard=args.replicas,
        shards_per_replica=args.shards_per_replica,
        search_in_router=args.search_in_router or (False if args.shards_per_replica else None),
        router_replicas=args.router_replicas,
        shard_num_cpus=args.shard_num_cpus,
        router_num_cpus=args.shard_num_cpus,
        shard_timeout_s=args.shard_timeout_s,
    )
    try:
        url = run_server(cfg, blocking=False) + "/search_vectors"
        tally, kills, wall = asyncio.run(load_with_kills(url, queries, exact, args, args.shards))
    finally:
        serve.shutdown()
        if started_ray:
            ray.shutdown()
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    return {
        "benchmark": "serve_faults",
        "machine": {**machine_info(), "load_average_at_end": list(os.getloadavg())},
        "settings": settings,
        "kills": kills,
        "result": tally.summary(wall),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="", help="Where to write the JSON results.")
    parser.add_argument("--n", type=int, default=20_000, help="Index size (random vectors).")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--replicas", type=int, default=1, help="Replicas per shard group.")
    parser.add_argument(
        "--shards-per-replica",
        type=int,
        default=None,
        help="Shards per group (default: the service's, as many as fit; 1: one per shard).",
    )
    parser.add_argument(
        "--search-in-router",
        action="store_true",
        help="The router holds the shards (the default for a small index unless "
        "--shards-per-replica is given); kills then hit router replicas.",
    )
    parser.add_argument("--router-replicas", type=int, default=1)
    parser.add_argument("--requests", type=int, default=600, help="Requests to send in all.")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-duration-s", type=float, default=120.0)
    parser.add_argument("--request-timeout-s", type=float, default=30.0)
    parser.add_argument("--kills", type=int, default=2, help="Replicas to kill.")
    parser.add_argument("--kill-after", type=float, default=0.2, help="Share sent before kill 1.")
    parser.add_argument("--kill-every", type=int, default=150, help="Requests between kills.")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--shard-num-cpus", type=float, default=0.1)
    parser.add_argument("--shard-timeout-s", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result["result"], indent=2), "\nkills:", result["kills"], flush=True)
    if args.out:
        print(f"wrote {write_results(args.out, result)}")
    return result


if __name__ == "__main__":
    main()
