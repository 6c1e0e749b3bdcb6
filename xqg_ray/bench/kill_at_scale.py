"""A kill at corpus scale: does a killed build resume to the same bytes, redoing only lost parts?

    python -m xqg_ray.bench.kill_at_scale [--size 1000000] [--storages local,s3]
        [--faults driver,worker] [--out runs/bench/kill_at_scale.json]

The build of the scale benchmark (`scale.py`: synthetic corpus, hashing encoder, template
generator, IVF-PQ shards), on a local run root and on a loopback moto S3 server. Per storage:

- **clean**: an undisturbed build in a fresh driver process, the reference (timed);
- **driver**: a build whose driver is SIGKILLed with its process group (the driver and every Ray
  process it started) at `--kill-at` (0.5) of the clean build's time, then rerun to completion
  (timed): per part stage, the parts finished before the rerun against the parts it computed;
- **worker**: a build in which one Ray worker process of a generate/encode actor
  (`ray::MapWorker(MapBatches(PartWorker))`, a descendant of the driver) is SIGKILLed at the same
  moment; Ray Data must restart it and finish (rerun if it does not).

Every run root is compared with the clean one file by file (sha256 of every file but `stats/`,
the runs' own timings), and every sha256 that a part record, table manifest, shard record or
index manifest names is checked against the file it names. Run roots are deleted once hashed.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import posixpath
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from xqg_ray.bench.checksums import named_checksums
from xqg_ray.bench.harness import format_table, machine_info, write_results
from xqg_ray.bench.scale import (
    QUERIES,
    S3_ENV,
    _proc_table,
    add_pipeline_options,
    descendants,
    pipeline_flags,
    restore_env,
    scale_run_config,
    start_s3,
)
from xqg_ray.bench.synthetic import scale_corpus

STARTED = "KILL-AT-SCALE BUILD STARTED"
RESULT = "RESULT "
PART_STAGES = ("generate", "encode-passages", "encode-queries", "encode-generated")
NOT_OUTPUTS = ("stats",)  # each run's own timings and throughput, not outputs
PART_ACTOR = "PartWorker"  # in the process title of a Ray Data actor that runs part tasks


# --- one build in a driver process of its own ------------------------------------------------


def run_child(args: argparse.Namespace) -> None:
    """The driver: start Ray, build, print the build's time and the parts each stage computed."""
    from xqg_ray.ray_start import start_ray
    from xqg_ray.stages.pipeline import build

    cfg = scale_run_config(args.root, json.loads(args.corpus), args.size, args)
    start = time.perf_counter()
    start_ray(num_cpus=args.cpus)
    ray_seconds = time.perf_counter() - start
    print(STARTED, flush=True)
    start = time.perf_counter()
    report = build(cfg)
    stages = {
        name: {"parts": row["parts"], "parts_computed": row.get("parts_computed", 0)}
        for name, row in report["stages"].items()
        if name in PART_STAGES
    }
    result = {
        "build_seconds": time.perf_counter() - start,
        "ray_start_seconds": ray_seconds,
        "stages": stages,
    }
    print(RESULT + json.dumps(result), flush=True)


class Driver:
    """A build in a fresh driver process that leads its own process group, so one killpg takes
    the driver and the Ray it started (raylet, GCS, workers) down at once, as a lost node would."""

    def __init__(self, args: argparse.Namespace, root: str, corpus: dict, size: int, log: Path):
        command = [
            sys.executable, "-m", "xqg_ray.bench.kill_at_scale", "--child", "--root", root,
            "--corpus", json.dumps(corpus), "--size", str(size), *pipeline_flags(args),
        ]  # fmt: skip
        self.log = log
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local Ray
        with open(log, "w", encoding="utf-8") as handle:
            self.process = subprocess.Popen(
                command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def _lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8", errors="replace").splitlines()

    def wait_building(self, timeout: float = 600) -> float:
        """Block until the driver has started Ray and called `build`; returns that moment."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if STARTED in self._lines():
                return time.monotonic()
            if self.process.poll() is not None:
                self.fail("exited before building")
            time.sleep(0.2)
        self.fail(f"not building after {timeout} s")

    def finish(self) -> dict[str, Any] | None:
        """Wait for the driver; its result, or None when the build failed."""
        self.process.wait()
        results = [ln for ln in self._lines() if ln.startswith(RESULT)]
        if self.process.returncode != 0 or not results:
            return None
        return json.loads(results[-1][len(RESULT) :])

    def kill_group(self) -> None:
        os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()

    def fail(self, why: str) -> NoReturn:
        tail = "\n".join(self._lines()[-40:])
        raise SystemExit(f"{self.log}: the build {why} (exit {self.process.poll()}):\n{tail}")


# --- what a run root holds ----------------------------------------------------------------------


def stage_tables(cfg: Any) -> dict[str, list[str]]:
    """The tables each part stage writes (the fused encode-generated stage writes two)."""
    from xqg_ray.paths import RunPaths
    from xqg_ray.stages.augment import sums_name

    paths, enc = RunPaths(cfg.root), cfg.encoder.name
    return {
        "generate": [paths.generated(cfg.generator.name)],
        "encode-passages": [paths.embeddings(enc, "passages")],
        "encode-queries": [paths.embeddings(enc, "queries")],
        "encode-generated": [paths.embeddings(enc, sums_name(cfg)), paths.embeddings(enc, "xqg")],
    }


def fresh_listings(root: str) -> None:
    """Forget the listings this process cached for `root`'s filesystem: s3fs answers `ls` and
    `info` from its listing cache, which never sees the objects other processes write since."""
    from xqg_ray.storage import url_to_fs

    url_to_fs(root)[0].invalidate_cache()


def finished_parts(cfg: Any) -> dict[str, int]:
    """Per part stage, the parts committed with their record in every table the stage writes:
    what a rerun keeps (`run_stage` recomputes the rest)."""
    from xqg_ray.storage import PartitionedTable

    fresh_listings(cfg.root)
    return {
        stage: len(set.intersection(*(set(PartitionedTable(u).recorded_parts()) for u in urls)))
        for stage, urls in stage_tables(cfg).items()
    }


def settled_parts(cfg: Any, quiet_s: float = 3.0, limit_s: float = 120.0) -> dict[str, int]:
    """`finished_parts` once it stops changing: a worker outliving its driver could still be
    committing the part it held."""
    deadline = time.monotonic() + limit_s
    counts = finished_parts(cfg)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = finished_parts(cfg)
        if now == counts:
            return counts
        counts = now
    raise SystemExit(f"{cfg.root}: parts still arriving {limit_s} s after the kill")


def running(pid: int) -> bool:
    """Whether `pid` is a live process (not gone, not a zombie awaiting its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def outlived(processes: dict[int, str], limit_s: float = 60.0) -> dict[str, Any]:
    """Wait for the killed driver's processes that escaped its process group to go: Ray's
    workers lead groups of their own (setpgrp) and exit only once they notice their raylet is
    gone; until then they may still commit a part. Any left after `limit_s` are SIGKILLed."""
    start = time.monotonic()
    time.sleep(0.5)  # the group's SIGKILL is delivered; its members are gone or zombies
    escaped = {pid: name for pid, name in processes.items() if running(pid)}
    alive = dict(escaped)
    while alive and time.monotonic() - start < limit_s:
        time.sleep(0.2)
        alive = {pid: name for pid, name in alive.items() if running(pid)}
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    return {
        "escaped_the_group": sorted(escaped.values()),
        "escaped_gone_after_seconds": time.monotonic() - start if escaped else 0.0,
        "escaped_killed_after_limit": sorted(alive.values()),
    }


def digest_root(root: str) -> dict[str, Any]:
    """sha256 of every file under `root` but `stats/`, and the checksums its records and
    manifests name that do not match the file they name (should be none)."""
    from xqg_ray.storage import url_to_fs

    fresh_listings(root)
    fs, path = url_to_fs(root)
    base = path.rstrip("/")
    files: dict[str, str] = {}
    named: list[tuple[str, str, str]] = []
    for name in sorted(fs.find(base)):
        rel = name[len(base) + 1 :]
        if rel.split("/", 1)[0] in NOT_OUTPUTS:
            continue
        digest = hashlib.sha256()
        with fs.open(name, "rb") as handle:
            data = handle.read() if rel.endswith(".json") else None
            if data is not None:
                digest.update(data)
            else:
                for block in iter(lambda h=handle: h.read(1 << 22), b""):
                    digest.update(block)
        files[rel] = digest.hexdigest()
        if data is not None:
            named += [(rel, f, s) for f, s in named_checksums(rel, json.loads(data))]
    mismatches = [
        f"{source} names {file}: {'missing' if file not in files else 'sha256 differs'}"
        for source, file, sha in named
        if files.get(file) != sha
    ]
    return {"files": files, "checksums_named": len(named), "checksum_mismatches": mismatches}


def is_temporary(rel: str) -> bool:
    """A writer's temporary sibling (`.tmp-<uuid>-<name>`), left by a write the kill cut short:
    no reader lists it, the rerun writes the file under its final name."""
    return posixpath.basename(rel).startswith(".tmp-")


def compare(reference: dict[str, str], files: dict[str, str]) -> dict[str, Any]:
    """File-by-file comparison with the clean build (temporary leftovers counted apart)."""
    leftovers = sorted(p for p in files if is_temporary(p))
    outputs = {p: sha for p, sha in files.items() if not is_temporary(p)}
    differing = sorted(p for p in reference.keys() & outputs.keys() if reference[p] != outputs[p])
    missing = sorted(reference.keys() - outputs.keys())
    extra = sorted(outputs.keys() - reference.keys())
    return {
        "identical": not (differing or missing or extra),
        "files_compared": len(reference),
        "parts_compared": sum(posixpath.basename(p).startswith("part-") for p in reference),
        "index_files_compared": sum(p.startswith("index/") for p in reference),
        "differing": differing,
        "missing": missing,
        "extra": extra,
        "temporary_leftovers": leftovers,
    }


def remove_root(root: str) -> None:
    """Drop a hashed run root (moto keeps every object in memory; 1M passages is 1.4 GB)."""
    from xqg_ray.storage import url_to_fs

    if "://" not in root:
        shutil.rmtree(root, ignore_errors=True)
        return
    fs, path = url_to_fs(root)
    fs.rm(path, recursive=True)


def busy(title: str) -> bool:
    """A part actor running a part: Ray titles a worker `ray::<actor class>.<method>` while it
    runs a method (`__init__` while it builds its task) and `ray::<actor class>` while idle."""
    return PART_ACTOR in title and ")." in title and not title.endswith(".__init__")


# --- the faults ---------------------------------------------------------------------------------


class Storage:
    """One storage's runs: where their roots go, the corpus, the clean reference."""

    def __init__(self, args: argparse.Namespace, name: str, size: int, corpus: dict):
        self.args, self.name, self.size, self.corpus = args, name, size, corpus
        self.workdir = Path(args.workdir).resolve()
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.reference: dict[str, str] = {}
        self.clean_seconds = 0.0

    def root(self, run: str) -> str:
        label = f"{self.stamp}-{self.size}-{run}"
        if self.name == "s3":
            return f"s3://xqg-scale/kill-{label}"
        return str(self.workdir / f"run-{label}")

    def driver(self, root: str, label: str) -> Driver:
        log = self.workdir / f"{self.name}-{self.stamp}-{label}.log"
        return Driver(self.args, root, self.corpus, self.size, log)

    def config(self, root: str) -> Any:
        return scale_run_config(root, self.corpus, self.size, self.args)

    def kill_moment(self, driver: Driver) -> float:
        """Sleep until `--kill-at` of the clean build's time has passed since `build` began."""
        began = driver.wait_building()
        time.sleep(max(0.0, began + self.args.kill_at * self.clean_seconds - time.monotonic()))
        return time.monotonic() - began

    def outcome(self, root: str) -> dict[str, Any]:
        digest = digest_root(root)
        remove_root(root)
        return {
            **compare(self.reference, digest["files"]),
            "checksums_named": digest["checksums_named"],
            "checksum_mismatches": digest["checksum_mismatches"],
        }

    def clean(self) -> dict[str, Any]:
        root = self.root("clean")
        load = os.getloadavg()[0]
        driver = self.driver(root, "clean")
        result = driver.finish() or driver.fail("failed")
        digest = digest_root(root)
        remove_root(root)
        self.reference = digest["files"]
        self.clean_seconds = result["build_seconds"]
        return {
            "run": "clean",
            "build_seconds": result["build_seconds"],
            "ray_start_seconds": result["ray_start_seconds"],
            "stages": result["stages"],
            "files": len(digest["files"]),
            "checksums_named": digest["checksums_named"],
            "checksum_mismatches": digest["checksum_mismatches"],
            "load_average": [load, os.getloadavg()[0]],
        }

    def driver_kill(self) -> dict[str, Any]:
        root = self.root("driver")
        cfg = self.config(root)
        load = os.getloadavg()[0]
        driver = self.driver(root, "driver-killed")
        killed_after = self.kill_moment(driver)
        table = _proc_table()
        processes = {pid: table[pid][1] for pid in descendants(driver.pid, table)}
        driver.kill_group()
        orphans = outlived(processes)
        kept = settled_parts(cfg)
        rerun = self.driver(root, "driver-rerun")
        result = rerun.finish() or rerun.fail("rerun failed")
        stages = {}
        for stage, row in result["stages"].items():
            lost = row["parts"] - kept[stage]
            stages[stage] = {
                "parts": row["parts"],
                "finished_before_rerun": kept[stage],
                "lost": lost,
                "redone": row["parts_computed"],
            }
        return {
            "run": "driver",
            "killed_after_seconds": killed_after,
            **orphans,
            "rerun_seconds": result["build_seconds"],
            "rerun_share_of_clean": result["build_seconds"] / self.clean_seconds,
            "stages": stages,
            "only_lost_parts_redone": all(s["redone"] == s["lost"] for s in stages.values()),
            "parts_lost": sum(s["lost"] for s in stages.values()),
            "parts_redone": sum(s["redone"] for s in stages.values()),
            "parts_total": sum(s["parts"] for s in stages.values()),
            **self.outcome(root),
            "load_average": [load, os.getloadavg()[0]],
        }

    def worker_kill(self) -> dict[str, Any]:
        root = self.root("worker")
        cfg = self.config(root)
        load = os.getloadavg()[0]
        driver = self.driver(root, "worker-killed")
        killed_after = self.kill_moment(driver)
        victim = None
        while victim is None and driver.process.poll() is None:
            table = _proc_table()
            actors = sorted(p for p in descendants(driver.pid, table) if busy(table[p][1]))
            for pid in actors:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                victim = table[pid][1]
                break
            else:
                time.sleep(0.1)
        at_kill = finished_parts(cfg)
        result = driver.finish()
        rerun = None
        if result is None:
            rerun = self.driver(root, "worker-rerun").finish()
        return {
            "run": "worker",
            "killed_after_seconds": killed_after,
            "victim": victim,
            "finished_at_kill": at_kill,
            "completed_without_rerun": result is not None,
            "build_seconds": result["build_seconds"] if result else None,
            "rerun_seconds": rerun["build_seconds"] if rerun else None,
            **self.outcome(root),
            "load_average": [load, os.getloadavg()[0]],
        }


# --- the benchmark ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="passages")
    parser.add_argument("--s3-size", type=int, default=0, help="passages on S3 (0: --size)")
    parser.add_argument("--storages", default="local,s3", help="local, s3 or both")
    parser.add_argument("--faults", default="driver,worker", help="driver, worker or both")
    parser.add_argument("--kill-at", type=float, default=0.5, help="share of the clean build")
    parser.add_argument("--out", default="runs/bench/kill_at_scale.json")
    parser.add_argument("--workdir", default="runs/bench/kill_at_scale")
    add_pipeline_options(parser)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", default="", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return None
    command = " ".join(["python -m xqg_ray.bench.kill_at_scale", *(argv or sys.argv[1:])])
    storages = [s.strip() for s in args.storages.split(",") if s.strip()]
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    saved = {key: os.environ.get(key) for key in S3_ENV}
    server = start_s3()[0] if "s3" in storages else None
    corpora: dict[int, dict] = {}
    rows: list[dict[str, Any]] = []
    results = {
        "benchmark": "kill_at_scale",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "note": "hashing encoder and template generator (scale stand-ins): pipeline cost only",
        "machine": machine_info(),
        "kill_at": args.kill_at,
        "runs": rows,
    }
    try:
        for name in storages:
            size = args.s3_size if name == "s3" and args.s3_size else args.size
            if size not in corpora:
                corpora[size] = scale_corpus(workdir / f"corpus-{size}", size, QUERIES)
            storage = Storage(args, name, size, corpora[size])
            runs = [storage.clean()]
            if "driver" in faults:
                runs.append(storage.driver_kill())
            if "worker" in faults:
                runs.append(storage.worker_kill())
            for run in runs:
                rows.append({"storage": name, "size": size, **run})
                print(summary_row(rows[-1]), flush=True)
                write_results(args.out, results)  # so far: a later failure keeps these
    finally:
        if server is not None:
            server.terminate()
            server.wait()
            restore_env(saved)
    results["machine"] = machine_info()  # the load average at the end
    print(report_table(rows))
    write_results(args.out, results)
    return results


def summary_row(row: dict[str, Any]) -> str:
    seconds = row.get("rerun_seconds") or row.get("build_seconds")
    same = row.get("identical", "reference")
    return f"{row['storage']} {row['size']:,} {row['run']}: {seconds:.1f} s, identical: {same}"


def report_table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "storage", "passages", "run", "killed after s", "build s", "rerun s", "rerun / clean",
        "parts kept / redone / lost", "only lost redone", "identical (files)", "load 1 min",
    ]  # fmt: skip
    table = []
    for row in rows:
        parts = None
        if row["run"] == "driver":
            kept = row["parts_total"] - row["parts_lost"]
            parts = f"{kept} / {row['parts_redone']} / {row['parts_lost']}"
        identical = None
        if "identical" in row:
            identical = f"{'yes' if row['identical'] else 'NO'} ({row['files_compared']})"
        table.append(
            [
                row["storage"],
                f"{row['size']:,}",
                row["run"],
                row.get("killed_after_seconds"),
                row.get("build_seconds"),
                row.get("rerun_seconds"),
                row.get("rerun_share_of_clean"),
                parts,
                row.get("only_lost_parts_redone"),
                identical,
                f"{row['load_average'][0]:.1f}-{row['load_average'][1]:.1f}",
            ]
        )
    return format_table(headers, table)


if __name__ == "__main__":
    main()
