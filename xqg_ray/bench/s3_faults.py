"""S3 faults: a build and an evaluation on an s3:// root behind a fault-injecting proxy.

    python -m xqg_ray.bench.s3_faults --rate 0.01 --rate 0.1 --out runs/bench/s3_faults.json

A moto S3 server runs on 127.0.0.1 in its own process, and `testing/s3_fault_proxy.py` sits in
front of it: every request of the driver and of every Ray worker goes through the proxy
(`AWS_ENDPOINT_URL`), which answers a share `--rate` of them with a fault (S3's 500
`InternalError` and 503 `SlowDown`, a reset connection, a response lost after the server acted,
a delayed answer) and cuts one Parquet part's upload halfway. At each rate the script builds
the tiny run (tiny random-weight mT5 and BERT from `testing/tiny.py`, 12 XQuAD paragraphs, en+de,
3 parts, every strategy, 2 shards) and evaluates it on a fresh bucket, then:

- outcome: `completed`, or `stopped` with the error's message (an `XqgError`: it must name the
  object and the setting to change), or `crashed` (any other exception: a bug);
- if it did not complete, a rerun on the same root, through the same proxy and plan, which must
  finish;
- every table manifest's parts and every index manifest's files are read back from the server
  directly (not through the proxy) and their SHA-256 compared with the manifest's;
- the tables and the metrics are compared with a fault-free build on a local root.

The proxy's counts give the requests seen, the faults per kind, `retried` (attempts that repeated
a failed request), `recovered` (failed requests that got through on a later attempt) and
`failed` (requests whose last attempt failed: the client gave up).

The tiny models make the figures say nothing about quality or speed: they exercise the storage
layer's retries and the build's commit protocol.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from xqg_ray.bench.checksums import named_checksums
from xqg_ray.bench.harness import format_table, machine_info, write_results
from xqg_ray.bench.scale import S3_ENV, restore_env, start_s3
from xqg_ray.index.shards import MANIFEST_FILE
from xqg_ray.storage import MANIFEST
from xqg_ray.testing.s3_fault_proxy import FaultPlan, S3FaultProxy
from xqg_ray.testing.tiny import tiny_run_config

# --- the servers ---------------------------------------------------------------------------------


def create_bucket(endpoint: str) -> str:
    import boto3

    name = f"xqg-faults-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


# --- the run -------------------------------------------------------------------------------------


def run_config(root: str, models: dict[str, str], xquad_dir: str, cpus: int):
    """The tiny run of the tests (`testing/tiny.tiny_run_config`), every strategy."""
    return tiny_run_config(root, models, xquad_dir, ray={"progress_bars": False, "num_cpus": cpus})


def attempt(cfg) -> dict[str, Any]:
    """Build and evaluate; what happened, and how long it took."""
    from xqg_ray.evaluate.driver import evaluate_settings
    from xqg_ray.stages.pipeline import build
    from xqg_ray.stages.runner import user_error

    start = time.perf_counter()
    try:
        build(cfg)
        metrics = evaluate_settings(cfg)
    except Exception as exc:  # classified: a stop with a user error, or a crash (a bug)
        found = user_error(exc)
        outcome = "stopped" if found is not None else "crashed"
        message = str(found) if found is not None else f"{type(exc).__name__}: {exc}"
        return {
            "outcome": outcome,
            "error": message.splitlines()[0][:500] if message else "",
            "detail": "" if found is not None else message[-6000:],  # a crash's traceback
            "error_type": type(found or exc).__name__,
            "wall_s": round(time.perf_counter() - start, 2),
        }
    return {
        "outcome": "completed",
        "wall_s": round(time.perf_counter() - start, 2),
        "metrics": metrics["strategies"],
    }


# --- checks --------------------------------------------------------------------------------------


def verify_checksums(endpoint: str, bucket: str) -> dict[str, Any]:
    """Every manifest's parts (tables) and files (indexes), hashed as the server stores them."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    keys = [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for item in page.get("Contents", [])
    ]

    def sha256(key: str) -> str | None:
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            return None
        return hashlib.sha256(body).hexdigest()

    checked, mismatched = 0, []
    for key in keys:
        if key.rsplit("/", 1)[-1] not in (MANIFEST, MANIFEST_FILE):
            continue
        manifest = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        for object_key, digest in named_checksums(key, manifest):
            checked += 1
            if sha256(object_key) != digest:
                mismatched.append(f"s3://{bucket}/{object_key}")
    return {"objects_checked": checked, "mismatched": mismatched}


def same_tables(reference_root: str, root: str, cfg) -> bool:
    """The generated text, ids and vectors of the faulted run equal the fault-free run's."""
    import numpy as np

    from xqg_ray.paths import RunPaths
    from xqg_ray.schema import arrow_to_vectors
    from xqg_ray.storage import PartitionedTable

    def tables(base: str) -> dict[str, Any]:
        paths = RunPaths(base)
        enc = cfg.encoder.name
        urls = {"generated": paths.generated(cfg.generator.name)}
        for what in ("passages", "queries", "xqg", "expand", "multivector"):
            urls[what] = paths.embeddings(enc, what)
        return {what: PartitionedTable(url).read() for what, url in urls.items()}

    ref, got = tables(reference_root), tables(root)
    if not ref["generated"].equals(got["generated"]):
        return False
    for what in ref:
        if what == "generated":
            continue
        a, b = ref[what], got[what]
        if not a.drop_columns(["vector"]).equals(b.drop_columns(["vector"])):
            return False
        va, vb = arrow_to_vectors(a["vector"]), arrow_to_vectors(b["vector"])
        if not np.allclose(va, vb, rtol=1e-4, atol=1e-5):
            return False
    return True


def same_metrics(a: dict[str, Any], b: dict[str, Any], tolerance: float = 1e-9) -> bool:
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        other = b[key]
        if isinstance(value, dict):
            if not isinstance(other, dict) or not same_metrics(value, other, tolerance):
                return False
        elif isinstance(value, float) or isinstance(other, float):
            if abs(float(value) - float(other)) > tolerance:
                return False
        elif value != other:
            return False
    return True


# --- one rate ------------------------------------------------------------------------------------


def run_rate(
    rate: float,
    proxy: S3FaultProxy,
    moto_endpoint: str,
    models: dict[str, str],
    xquad_dir: str,
    reference: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    import s3fs

    bucket = create_bucket(moto_endpoint)
    root = f"s3://{bucket}/run"
    cfg = run_config(root, models, xquad_dir, args.cpus)
    plan = FaultPlan(
        rate=rate,
        delay_s=args.delay_s,
        cut_uploads=1,
        cut_after=args.cut_after,
        cut_match="/part-",
        seed=args.seed,
    )
    proxy.set_plan(plan)
    proxy.clear()
    s3fs.S3FileSystem.clear_instance_cache()
    first = attempt(cfg)
    first["proxy"] = proxy.stats()
    row: dict[str, Any] = {"rate": rate, "root": root, "first": first, "reruns": []}
    final = first
    while final["outcome"] != "completed" and len(row["reruns"]) < args.max_reruns:
        # each rerun draws other faults: replaying the same seed would fault the same request
        proxy.set_plan(replace(plan, seed=plan.seed + len(row["reruns"]) + 1))
        proxy.clear()
        s3fs.S3FileSystem.clear_instance_cache()
        final = attempt(cfg)
        final["proxy"] = proxy.stats()
        row["reruns"].append(final)
    row["completed"] = final["outcome"] == "completed"
    proxy.set_plan(FaultPlan())  # the checks read without faults (the checksums bypass the proxy)
    row["checksums"] = verify_checksums(moto_endpoint, bucket)
    if row["completed"]:
        row["same_tables_as_fault_free"] = same_tables(reference["root"], root, cfg)
        row["same_metrics_as_fault_free"] = same_metrics(reference["metrics"], final["metrics"])
    return row


def summary_row(row: dict[str, Any]) -> list[Any]:
    first = row["first"]
    faults = first["proxy"]["faults"]
    kinds = ", ".join(f"{kind} {n}" for kind, n in faults.items() if n)
    outcome = first["outcome"]
    if outcome != "completed":
        outcome += f": {first['error'][:120]}"
    rerun = "-"
    if row["reruns"]:
        last = row["reruns"][-1]
        rerun = f"{last['outcome']} ({len(row['reruns'])} rerun(s), {last['wall_s']:.1f} s)"
    return [
        f"{row['rate']:g}",
        first["proxy"]["requests"],
        kinds or "none",
        first["proxy"]["retried"],
        first["proxy"]["recovered"],
        first["proxy"]["failed"],
        outcome,
        rerun,
        f"{row['checksums']['objects_checked'] - len(row['checksums']['mismatched'])}"
        f"/{row['checksums']['objects_checked']}",
        row.get("same_tables_as_fault_free"),
        first["wall_s"],
    ]


HEADERS = [
    "rate",
    "requests",
    "faults",
    "retried",
    "recovered",
    "failed",
    "outcome",
    "rerun",
    "sha256 ok",
    "same as fault-free",
    "wall s",
]


# --- the script ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rate", type=float, action="append", help="fault rate, repeatable (default 0.01, 0.1)"
    )
    parser.add_argument("--out", default="runs/bench/s3_faults.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--delay-s", type=float, default=0.5, help="a delayed answer's delay")
    parser.add_argument(
        "--cut-after", type=int, default=3, help="Parquet part uploads let through before the cut"
    )
    parser.add_argument("--max-reruns", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--xquad-dir", default="", help="XQuAD folder; default: shared or cache.")
    parser.add_argument("--models-dir", default="", help="Tiny model cache; default: xqg cache.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from xqg_ray.datasets.fetch import cache_root, ensure_dataset
    from xqg_ray.ray_start import start_ray
    from xqg_ray.testing.tiny import ensure_tiny_models

    args = parse_args(argv)
    rates = args.rate or [0.01, 0.1]
    xquad_dir = ensure_dataset("xquad", args.xquad_dir or None)
    models = ensure_tiny_models(args.models_dir or cache_root() / "tiny-models", xquad_dir)
    machine = machine_info()
    saved = {key: os.environ.get(key) for key in S3_ENV}
    moto, moto_endpoint = start_s3()  # the scale benchmark's moto server, in its own process
    proxy = S3FaultProxy(moto_endpoint).start()
    os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint  # Ray's workers inherit it: all go through
    import ray

    rows = []
    try:
        start_ray(num_cpus=args.cpus)
        with tempfile.TemporaryDirectory(prefix="xqg-s3-faults-") as workdir:
            print("fault-free reference build (local root) ...", flush=True)
            ref_cfg = run_config(str(Path(workdir) / "ref"), models, xquad_dir, args.cpus)
            ref = attempt(ref_cfg)
            if ref["outcome"] != "completed":
                raise RuntimeError(f"the fault-free reference build failed: {ref['error']}")
            reference = {"root": ref_cfg.root, "metrics": ref["metrics"], "wall_s": ref["wall_s"]}
            for rate in rates:
                print(f"rate {rate:g} ...", flush=True)
                rows.append(
                    run_rate(rate, proxy, moto_endpoint, models, xquad_dir, reference, args)
                )
    finally:
        ray.shutdown()
        proxy.stop()
        moto.terminate()
        restore_env(saved)
    from xqg_ray import storage

    results = {
        "benchmark": "s3_faults",
        "command": " ".join(["python -m xqg_ray.bench.s3_faults", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine,
        "storage_settings": storage.s3_settings(),
        "plan": {"delay_s": args.delay_s, "cut_after": args.cut_after, "seed": args.seed},
        "reference_wall_s": reference["wall_s"],
        "rates": rows,
    }
    print(format_table(HEADERS, [summary_row(row) for row in rows]))
    print(f"fault-free build + evaluation on a local root: {reference['wall_s']:.1f} s")
    path = write_results(args.out, results)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
