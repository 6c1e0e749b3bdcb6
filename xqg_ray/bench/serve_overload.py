"""An overloaded service: the default service driven past capacity, on loopback, bounded.

For each index, deploys the service as `xqg-ray serve` does (`run_server`, the default
`ServeConfig` plus any `--set`), then for each concurrency level (1, 16, 64, 256 by default)
`clients` concurrent clients send max(`--min-requests`, clients x `--requests-per-client`)
one-query requests in all, each with a client timeout (`--timeout-s`), no request started after
`--max-level-s`. Per level: accepted QPS, shed share (503), timeouts, p50/p99 of the accepted
requests, whether every 503 carried `Retry-After`, then recovery: one probe at a time for
`--recovery-s` after the load stops (their p50, and from when every probe was normal again).
Probing goes on (up to `--settle-max-s`) until the service is normal before the next level.

Goals (from the level at concurrency 1, the unloaded one): accepted p99 within 3x its p99;
normal again (every probe 200 within 3x the unloaded p99) within 5 s of the load stopping;
no replica restarted (Serve replica actors are the same before and after) and the application
RUNNING at the end.

Indexes: the demo's dense index (`--demo-root`, text queries from its corpus through /search,
encoded in the router) when it exists, else a synthetic 20,000 x 384 Flat index; and a
1,000,000 x 384 Flat index of random unit vectors in 4 shards (`--large-n`, built once with the
project's index writer under `--workdir` and reused). Vector queries are checked against the
exact in-process answer (`wrong` must be 0).

    python -m xqg_ray.bench.serve_overload --out runs/bench/serve_overload.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np
import ray
from ray import serve
from ray.serve.schema import ApplicationStatus

from xqg_ray import storage
from xqg_ray.bench.harness import format_table, machine_info, parse_ints, write_results
from xqg_ray.bench.load import overload, percentile_ms, probe
from xqg_ray.bench.serve_latency import large_indexes, synthetic_indexes
from xqg_ray.config import parse_override, set_path
from xqg_ray.index.in_process import InProcessIndex
from xqg_ray.index.shards import MANIFEST_FILE, load_manifest
from xqg_ray.paths import RunPaths
from xqg_ray.serve.config import ServeConfig
from xqg_ray.serve.local import free_port, run_server
from xqg_ray.strict import validate

GOAL_P99_FACTOR = 3.0
GOAL_RECOVERY_S = 5.0


def demo_index(root: str, strategy: str) -> dict | None:
    """The run root's `strategy` index and corpus, with its evaluation query texts."""
    found = sorted(Path(root, "index").glob(f"*/{strategy}/{MANIFEST_FILE}"))
    if len(found) != 1:
        return None
    url = str(found[0].parent)
    queries = storage.read_table(RunPaths(root).corpus("queries"), columns=["text"])
    return {
        "label": f"{root} {strategy} ({load_manifest(url)['n_total']} passages)",
        "url": url,
        "corpus": RunPaths(root).corpus("passages"),
        "texts": queries["text"].to_pylist(),
    }


def the_indexes(args: argparse.Namespace) -> list[dict]:
    if args.index:  # given: these and no others
        return [{"label": url, "url": url} for url in args.index]
    indexes = []
    demo = demo_index(args.demo_root, args.strategy) if args.demo_root else None
    if demo is not None:
        indexes.append(demo)
    else:
        url = os.path.join(args.workdir, "random-20000x384-1shards")
        if not os.path.exists(os.path.join(url, MANIFEST_FILE)):
            synthetic_indexes(20_000, 384, [1], args.workdir)
        indexes.append({"label": "random 20000x384 flat (no demo run root)", "url": url})
    if args.large_n:
        url = os.path.join(args.workdir, f"random-{args.large_n}x384-flat")
        if not os.path.exists(os.path.join(url, MANIFEST_FILE)):
            started = time.perf_counter()
            large_indexes(args.workdir, args.large_n, 384, ["flat"])
            print(f"built {url} in {time.perf_counter() - started:.0f} s", flush=True)
        indexes.append({"label": f"random {args.large_n}x384 flat, 4 shards", "url": url})
    return indexes


def request_bodies(index: dict, k: int, distinct: int) -> tuple[str, list[str], list | None]:
    """(route, bodies, expected ids per body): texts through /search for a run root's index,
    random vectors through /search_vectors otherwise, checked against the exact answer."""
    if index.get("texts"):
        texts = index["texts"][:distinct]
        return "/search", [json.dumps({"queries": [t], "k": k}) for t in texts], None
    dim = int(load_manifest(index["url"])["dimension"])
    queries = np.random.default_rng(1).standard_normal((distinct, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, ids = InProcessIndex(index["url"]).search(queries, k)
    expected = [[[int(i) for i in row if i >= 0]] for row in ids]
    bodies = [json.dumps({"vectors": [q.tolist()], "k": k}) for q in queries]
    return "/search_vectors", bodies, expected


def replicas(app: str) -> set[str]:
    """The names of the application's live Serve replica actors."""
    names = ray.util.list_named_actors(all_namespaces=True)
    return {a["name"] for a in names if a["name"].startswith(f"SERVE_REPLICA::{app}#")}


def recovery(probes: list[dict], window_s: float, normal_ms: float | None) -> dict:
    """Probes within `window_s` of the load stopping: their p50, and the time from which every
    probe answered 200 within `normal_ms` (None: not within the probes sent)."""
    within = [p for p in probes if p["at_s"] <= window_s]
    normal_after = None
    if normal_ms is not None:
        for number, p in enumerate(probes):
            if all(q["status"] == 200 and q["ms"] <= normal_ms for q in probes[number:]):
                normal_after = p["at_s"]
                break
    return {
        "probes": len(within),
        "probes_ok": sum(p["status"] == 200 for p in within),
        "p50_ms": percentile_ms([p["ms"] for p in within if p["status"] == 200], 50),
        "normal_after_s": normal_after,
        "probes_until_normal": probes,
    }


def drive(url: str, bodies: list[str], expected, args: argparse.Namespace) -> list[dict]:
    rows: list[dict] = []
    unloaded_p99 = None
    for clients in args.levels:
        total = max(args.min_requests, clients * args.requests_per_client)
        load_before = list(os.getloadavg())
        row = asyncio.run(
            overload(
                url,
                bodies,
                clients,
                total,
                args.timeout_s,
                args.max_level_s,
                expected,
                args.obey_retry_after,
            )
        )
        if unloaded_p99 is None:
            unloaded_p99 = row["p99_ms"]
        normal_ms = GOAL_P99_FACTOR * unloaded_p99 if unloaded_p99 else None
        # probe for the recovery window, then on (up to settle-max-s) until normal
        probes = asyncio.run(probe(url, bodies[0], args.recovery_s, args.timeout_s))
        while recovery(probes, args.recovery_s, normal_ms)["normal_after_s"] is None:
            more = asyncio.run(probe(url, bodies[0], 1.0, args.timeout_s))
            offset = probes[-1]["at_s"] + probes[-1]["ms"] / 1000 if probes else 0.0
            probes += [{**p, "at_s": round(p["at_s"] + offset, 3)} for p in more]
            if probes[-1]["at_s"] > args.settle_max_s:
                break
        row["recovery"] = recovery(probes, args.recovery_s, normal_ms)
        row["load_average_before"] = load_before
        row["load_average_after"] = list(os.getloadavg())
        p99 = row["p99_ms"]
        row["goal_p99"] = bool(p99 is not None and unloaded_p99 and p99 <= normal_ms)
        after = row["recovery"]["normal_after_s"]
        row["goal_recovery"] = after is not None and after <= GOAL_RECOVERY_S
        rows.append(row)
        print(level_line(row), flush=True)
    return rows


def level_line(row: dict) -> str:
    rec = row["recovery"]
    return (
        f"c={row['clients']:<3} sent={row['sent']} accepted={row['accepted']} "
        f"shed={row['shed']} timeouts={row['timeout']} errors={row['error']} "
        f"wrong={row['wrong']} qps={row['accepted_qps']} p50={row['p50_ms']} "
        f"p99={row['p99_ms']} ms; recovery p50={rec['p50_ms']} ms, normal after "
        f"{rec['normal_after_s']} s; load={row['load_average_after'][0]:.2f}"
    )


def serve_config(index: dict, args: argparse.Namespace) -> ServeConfig:
    data: dict = {"index": index["url"], "port": free_port()}
    if index.get("corpus"):
        data["corpus"] = index["corpus"]
    for item in args.set:
        set_path(data, *parse_override(item))
    return validate(ServeConfig, data, "--set")


def run_index(index: dict, args: argparse.Namespace) -> dict:
    route, bodies, expected = request_bodies(index, args.k, args.distinct)
    cfg = serve_config(index, args)
    started = time.perf_counter()
    base = run_server(cfg, blocking=False)
    print(f"{index['label']}: service up in {time.perf_counter() - started:.1f} s", flush=True)
    try:
        url = base + route
        asyncio.run(overload(url, bodies, 1, args.warmup, args.timeout_s, 60.0))  # warm-up
        before = replicas(cfg.app_name)
        rows = drive(url, bodies, expected, args)
        after = replicas(cfg.app_name)
        status = serve.status().applications[cfg.app_name]
        return {
            "index": index["label"],
            "index_url": index["url"],
            "route": route,
            "checked": expected is not None,
            "config": cfg.model_dump(
                include={
                    "max_queued_requests",
                    "retry_after_s",
                    "max_batch_size",
                    "router_replicas",
                }
            ),  # fmt: skip
            "levels": rows,
            "replicas_restarted": sorted(before - after),
            "application_status": str(status.status.value),
            "no_crash": before == after and status.status == ApplicationStatus.RUNNING,
        }
    finally:
        serve.shutdown()
        ray.shutdown()


def summary_table(results: list[dict]) -> str:
    headers = ["index", "conc", "sent", "accepted QPS", "shed %", "timeouts", "p50 ms", "p99 ms"]
    headers += ["p99 <= 3x", "recovery p50 ms", "normal after s", "load 1m"]
    rows = []
    for result in results:
        for r in result["levels"]:
            rows.append(
                [
                    result["index"][:40],
                    r["clients"],
                    r["sent"],
                    r["accepted_qps"],
                    round(100 * (r["shed_share"] or 0), 1),
                    r["timeout"],
                    r["p50_ms"],
                    r["p99_ms"],
                    "yes" if r["goal_p99"] else "no",
                    r["recovery"]["p50_ms"],
                    r["recovery"]["normal_after_s"],
                    r["load_average_after"][0],
                ]
            )
    return format_table(headers, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="", help="Where to write the JSON results.")
    parser.add_argument(
        "--index",
        action="append",
        default=[],
        help="An index folder to drive with vector queries instead of the default indexes.",
    )
    parser.add_argument("--demo-root", default="runs/demo", help="A run root ('' for none).")
    parser.add_argument("--strategy", default="dense")
    parser.add_argument("--large-n", type=int, default=1_000_000, help="0: no large index.")
    parser.add_argument("--workdir", default="runs/bench/serve_overload")
    parser.add_argument("--levels", type=parse_ints, default=[1, 16, 64, 256])
    parser.add_argument("--requests-per-client", type=int, default=8)
    parser.add_argument("--min-requests", type=int, default=200, help="Per level, at least.")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="Client timeout.")
    parser.add_argument("--max-level-s", type=float, default=120.0)
    parser.add_argument("--recovery-s", type=float, default=GOAL_RECOVERY_S)
    parser.add_argument("--settle-max-s", type=float, default=60.0)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--distinct", type=int, default=64, help="Distinct queries per index.")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--obey-retry-after", action="store_true")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="A ServeConfig override, e.g. max_queued_requests=-1 (the unbounded queue).",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = {
        "benchmark": "serve_overload",
        "machine": machine_info(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "goals": {"p99_factor": GOAL_P99_FACTOR, "recovery_s": GOAL_RECOVERY_S},
        "indexes": [],
    }
    for index in the_indexes(args):
        result["indexes"].append(run_index(index, args))
        if args.out:
            write_results(args.out, result)  # a crash keeps the indexes done
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    if args.out:
        print(f"wrote {write_results(args.out, result)}")
    print(summary_table(result["indexes"]))
    for index in result["indexes"]:
        print(f"{index['index']}: no crash: {index['no_crash']} ({index['application_status']})")
    return result


if __name__ == "__main__":
    main()
