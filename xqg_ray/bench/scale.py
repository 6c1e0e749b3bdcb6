"""Corpus-scale benchmark: does the pipeline's driver stay flat while the corpus grows?

    python -m xqg_ray.bench.scale --sizes 20000,40000 [--s3] [--out runs/bench/scale.json]

For each size: a synthetic corpus (Parquet passages, 200 queries with qrels) -> ingest -> plan ->
generate (template generator) -> encode (64-d hashing encoder; xqg fused in the encoder actor)
-> index (IVF-PQ, 8 shards built by parallel tasks) -> search (nprobe 16, shard x query batch
calls on 2 search actors) and evaluate. The models are the scale stand-ins of `scale_models`
(they cost almost nothing), so the figures are the pipeline's: storage, Ray, parts, shards and
the driver.

Each size runs in a fresh child process (the driver), so its peak RSS is that size's alone; a
sampler thread there records the largest Ray worker's peak RSS. Reported per size: wall seconds
per stage, driver and largest-worker peak RSS, bytes written under the run root (and per table),
S3 requests (`--s3`: a loopback moto server in its own process that counts the requests it
serves, from the driver and every worker), and time(2N)/time(N) against the previous size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from xqg_ray.bench.harness import format_table, machine_info, write_results
from xqg_ray.bench.synthetic import scale_corpus

QUERIES = 200
COUNTER_PATH = "/__xqg_request_count"


# --- the configuration ---------------------------------------------------------------------------


def passages_per_part(size: int, asked: int) -> int:
    """`--passages-per-part`, or size / 32 within [2,500, 20,000]: small sizes still have
    parts for 8 shards, large ones keep parts (and tasks) a few seconds long."""
    return asked or int(min(20_000, max(2_500, size // 32)))


def scale_run_config(root: str, corpus: dict, size: int, args: argparse.Namespace):
    from xqg_ray.bench.scale_models import scale_config
    from xqg_ray.config import RunConfig

    nlist = args.nlist
    cfg = RunConfig.model_validate(
        {
            "root": root,
            "dataset": {"name": "generic", **corpus},
            "generator": {"languages": ["de", "fr"], "queries_per_language": 5},
            "collection": {
                "passages_per_part": passages_per_part(size, args.passages_per_part),
                "queries_per_part": QUERIES,
            },
            "stages": {
                "generate": {"actors": 2, "num_cpus": 0.5, "threads": 1},
                "encode": {"actors": 2, "num_cpus": 0.5, "threads": 1},
            },
            "ray": {"progress_bars": False, "num_cpus": args.cpus},
            "augment": {"strategies": ["dense", "xqg"]},
            "index": {
                "factory": f"IVF{nlist},PQ{args.dim // 4}x4",
                "shards": args.shards,
                "train_sample": min(size, 40 * nlist),
            },
            "search": {"depth": 100, "params": "nprobe=16"},
            "evaluate": {
                "experiment": "scale",
                "measures": ["R@10", "RR@10"],
                "searchers": {"actors": 2, "num_cpus": 0.5, "threads": 1},
            },
        }
    )
    return scale_config(cfg, dim=args.dim)


# --- measurement --------------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, first word of the command line, resident bytes), from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="utf-8") as handle:
                status = dict(line.split(":", 1) for line in handle if ":" in line)
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        rss = int(status.get("VmRSS", "0 kB").split()[0]) * 1024
        table[int(entry)] = (int(status["PPid"]), command, rss)
    return table


def descendants(root: int, table: dict[int, tuple[int, str, int]] | None = None) -> set[int]:
    """The pids below `root` in the process tree (children, grandchildren, ...): a driver's Ray
    processes, found without Ray's state API (which needs the dashboard)."""
    table = _proc_table() if table is None else table
    mine = {root}
    grew = True
    while grew:
        found = {pid for pid, (parent, _, _) in table.items() if parent in mine}
        grew = not found <= mine
        mine |= found
    return mine - {root}


class WorkerPeak:
    """Polls this process's descendants that are Ray workers (`ray::...`) and keeps the largest
    resident set seen (Linux /proc); the driver's own peak comes from getrusage."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.peak = 0
        self.peak_name = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WorkerPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.interval):
            table = _proc_table()
            for pid in descendants(me, table):
                _, command, rss = table[pid]
                if command.startswith("ray::") and rss > self.peak:
                    self.peak, self.peak_name = rss, command


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def request_count(endpoint: str | None) -> int | None:
    if not endpoint:
        return None
    with urllib.request.urlopen(endpoint + COUNTER_PATH, timeout=10) as answer:
        return int(json.loads(answer.read())["requests"])


def bytes_under(root: str) -> dict[str, int]:
    """Bytes stored under the run root, per top-level table folder (two levels deep)."""
    from xqg_ray.storage import url_to_fs

    fs, path = url_to_fs(root)
    out: dict[str, int] = {}
    for name, info in fs.find(path, detail=True).items():
        relative = name[len(path.rstrip("/")) + 1 :].split("/")
        key = (
            "/".join(relative[:3])
            if relative[0] in ("embeddings", "index")
            else "/".join(relative[:2])
        )
        out[key] = out.get(key, 0) + int(info.get("size") or 0)
    return out


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """One size in this (fresh) process: the pipeline with Ray, measured."""
    import ray

    from xqg_ray.evaluate.driver import evaluate_settings as evaluate
    from xqg_ray.ray_start import start_ray
    from xqg_ray.stages.pipeline import build

    corpus = json.loads(args.corpus)
    cfg = scale_run_config(args.root, corpus, args.size, args)
    requests_before = request_count(args.s3_endpoint)
    start = time.perf_counter()
    start_ray(num_cpus=args.cpus)
    ray_start = time.perf_counter() - start
    floor = _peak_rss_mb()  # imports and Ray's client: what the driver holds before any data
    with WorkerPeak() as workers:
        start = time.perf_counter()
        report = build(cfg)
        built = time.perf_counter()
        peak_after_build = _peak_rss_mb()
        metrics = evaluate(cfg)
        done = time.perf_counter()
    ray.shutdown()
    stages = {"ray_start": ray_start, **report["timings"]}
    for name, row in report["stages"].items():
        if "seconds" in row and not row.get("fused_into"):
            stages[name] = row["seconds"]
    for strategy, row in report["index"].items():
        stages[f"index-{strategy}"] = row["seconds"]
    stages["evaluate"] = done - built
    stored = bytes_under(cfg.root)
    enc = cfg.encoder.name
    return {
        "size": args.size,
        "parts": report["stages"]["encode-passages"]["parts"],
        "passages_per_part": cfg.collection.passages_per_part,
        "wall_seconds": done - start,
        "build_seconds": built - start,
        "stage_seconds": stages,
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "driver_peak_rss_after_build_mb": peak_after_build,
        "driver_peak_rss_before_data_mb": floor,
        "largest_worker_peak_rss_mb": workers.peak / 2**20,
        "largest_worker": workers.peak_name,
        "bytes_written": sum(stored.values()),
        "bytes_by_table": stored,
        "xqg_bytes_vs_dense": stored.get(f"embeddings/{enc}/xqg", 0)
        / max(1, stored.get(f"embeddings/{enc}/passages", 1)),
        "s3_requests": (
            request_count(args.s3_endpoint) - requests_before
            if requests_before is not None
            else None
        ),
        "index": report["index"],
        "metrics": {k: metrics["strategies"][k]["macro"] for k in metrics["strategies"]},
        "xqg_fused_mix_seconds": report["stages"].get("augment-xqg", {}).get("seconds"),
    }


# --- the S3 server --------------------------------------------------------------------------------


MOTO_SERVER = """
import json, sys, threading
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server
count = [0]
lock = threading.Lock()
app = DomainDispatcherApplication(create_backend_app)
def counting(environ, start_response):
    if environ.get("PATH_INFO") == "COUNTER_PATH":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"requests": count[0]}).encode()]
    with lock:
        count[0] += 1
    return app(environ, start_response)
server = make_server("127.0.0.1", 0, counting, threaded=True)
print(server.server_port, flush=True)
server.serve_forever()
""".replace("COUNTER_PATH", COUNTER_PATH)


S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def restore_env(saved: dict[str, str | None]) -> None:
    """Put the AWS variables back as they were (the benchmark may run inside another program)."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def start_s3() -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-c", MOTO_SERVER], stdout=subprocess.PIPE, text=True
    )
    port = int(process.stdout.readline())
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="xqg-scale")
    return process, endpoint


# --- the driver of the benchmark -----------------------------------------------------------------


def add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """The options `scale_run_config` reads, shared with the scripts that rerun this build."""
    parser.add_argument("--passages-per-part", type=int, default=0, help="0: size / 32")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--nlist", type=int, default=256)
    parser.add_argument("--cpus", type=int, default=2)


def pipeline_flags(args: argparse.Namespace) -> list[str]:
    """`add_pipeline_options`' values as command-line flags, for a child driver."""
    return [
        "--passages-per-part", str(args.passages_per_part), "--shards", str(args.shards),
        "--dim", str(args.dim), "--nlist", str(args.nlist), "--cpus", str(args.cpus),
    ]  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,40000", help="passages, comma separated")
    parser.add_argument("--s3", action="store_true", help="run roots on a loopback moto S3")
    parser.add_argument("--out", default="runs/bench/scale.json")
    parser.add_argument("--workdir", default="runs/bench/scale")
    add_pipeline_options(parser)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--root", default="", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", default="", help=argparse.SUPPRESS)
    parser.add_argument("--s3-endpoint", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        result = run_child(args)
        print("RESULT " + json.dumps(result), flush=True)
        return result
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    workdir = Path(args.workdir).resolve()
    saved = {key: os.environ.get(key) for key in S3_ENV}
    server, endpoint = start_s3() if args.s3 else (None, "")
    runs = []
    try:
        for size in sizes:
            start = time.perf_counter()
            corpus = scale_corpus(workdir / f"corpus-{size}", size, QUERIES)
            corpus_seconds = time.perf_counter() - start
            stamp = time.strftime("%Y%m%d-%H%M%S")
            root = (
                f"s3://xqg-scale/{stamp}-{size}"
                if args.s3
                else str(workdir / f"run-{stamp}-{size}")
            )
            command = [
                sys.executable, "-m", "xqg_ray.bench.scale", "--child", "--size", str(size),
                "--root", root, "--corpus", json.dumps(corpus), "--s3-endpoint", endpoint,
                *pipeline_flags(args),
            ]  # fmt: skip
            child = subprocess.run(command, capture_output=True, text=True, env=os.environ)
            lines = [ln for ln in child.stdout.splitlines() if ln.startswith("RESULT ")]
            if child.returncode != 0 or not lines:
                sys.stderr.write(child.stdout[-4000:] + child.stderr[-8000:])
                raise SystemExit(f"size {size}: the pipeline failed (exit {child.returncode})")
            result = json.loads(lines[-1][len("RESULT ") :])
            result["corpus_seconds"] = corpus_seconds
            result["root"] = root
            if runs:
                before = runs[-1]
                result["time_ratio_vs_previous"] = result["wall_seconds"] / before["wall_seconds"]
                result["size_ratio_vs_previous"] = size / before["size"]
            runs.append(result)
            print(summary_row(result), flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
            restore_env(saved)
    results = {
        "benchmark": "scale",
        "note": "hashing encoder and template generator (scale stand-ins): pipeline cost only",
        "machine": machine_info(),
        "s3": bool(args.s3),
        "runs": runs,
    }
    print(report_table(runs))
    write_results(args.out, results)
    return results


def summary_row(run: dict[str, Any]) -> str:
    return (
        f"{run['size']:>9,} passages: {run['wall_seconds']:.1f} s, driver "
        f"{run['driver_peak_rss_mb']:.0f} MB, worker {run['largest_worker_peak_rss_mb']:.0f} MB, "
        f"{run['bytes_written'] / 2**20:.0f} MiB written"
    )


def report_table(runs: list[dict[str, Any]]) -> str:
    stages = list(dict.fromkeys(s for run in runs for s in run["stage_seconds"]))
    headers = ["measure", *[f"{run['size']:,}" for run in runs]]
    rows = [[f"{s} s", *[run["stage_seconds"].get(s) for run in runs]] for s in stages]
    rows += [
        ["wall s", *[run["wall_seconds"] for run in runs]],
        ["time / previous", *[run.get("time_ratio_vs_previous") for run in runs]],
        ["driver peak RSS MB", *[run["driver_peak_rss_mb"] for run in runs]],
        ["  of which before data MB", *[run["driver_peak_rss_before_data_mb"] for run in runs]],
        ["largest worker MB", *[run["largest_worker_peak_rss_mb"] for run in runs]],
        ["MiB written", *[run["bytes_written"] / 2**20 for run in runs]],
        ["xqg bytes / dense", *[run["xqg_bytes_vs_dense"] for run in runs]],
        ["S3 requests", *[run["s3_requests"] for run in runs]],
        ["parts", *[run["parts"] for run in runs]],
    ]
    return format_table(headers, rows)


if __name__ == "__main__":
    main()
