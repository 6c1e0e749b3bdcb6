"""Generate and encode actors killed mid-run: Ray Data restarts them, retries the parts they held,
and the finished outputs equal an undisturbed in-process run (no duplicate or missing rows)."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
import ray
from helpers import tiny_run_config
from ray.util.state import list_actors
from test_pipeline import tables

from xqg_ray.paths import RunPaths
from xqg_ray.schema import arrow_to_vectors
from xqg_ray.serve.local import free_port
from xqg_ray.stages.pipeline import build
from xqg_ray.storage import PartitionedTable

pytestmark = pytest.mark.ray

PARTS = 8  # one passage per part, so every stage has parts in flight to lose
STRATEGIES = ("dense", "xqg")  # the two that need generate and encode; the rest add no actors


def _cfg(root: str, tiny_models, shared_data, **sections):
    return tiny_run_config(
        root,
        tiny_models,
        shared_data,
        dataset={"max_passages": PARTS},
        collection={"passages_per_part": 1},
        augment={"strategies": list(STRATEGIES)},
        **sections,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_models, shared_data):
    """The undisturbed run: in-process, no Ray, nothing killed."""
    cfg = _cfg(
        str(tmp_path_factory.mktemp("reference") / "run"),
        tiny_models,
        shared_data,
        ray={"enabled": False, "progress_bars": False},
    )
    build(cfg)
    return cfg


def part_workers(dashboard: str) -> list[dict]:
    """The live Ray Data actors that run part tasks (`MapWorker(MapBatches(PartWorker))`)."""
    actors = list_actors(
        address=dashboard,
        filters=[("state", "=", "ALIVE")],
        limit=1000,
        raise_on_missing_output=False,
    )
    return [a for a in actors if "PartWorker" in a["class_name"] and a.get("pid")]


def kill_one_worker(dashboard: str, rng: np.random.Generator) -> dict | None:
    """SIGKILL the worker process of a random part actor (as an OOM kill or crash would)."""
    workers = part_workers(dashboard)
    if not workers:
        return None
    victim = workers[rng.integers(len(workers))]
    try:
        os.kill(victim["pid"], signal.SIGKILL)
    except ProcessLookupError:
        return None
    return victim


def committed(url: str) -> int:
    return len(PartitionedTable(url).committed_parts())


def table_digest(table: pa.Table, sort_keys: list[str]) -> str:
    """A checksum of a table's rows in key order, independent of part order."""
    ordered = table.sort_by([(key, "ascending") for key in sort_keys])
    digest = hashlib.sha256()
    for column in ordered.columns:
        digest.update(repr(column.to_pylist()).encode())
    return digest.hexdigest()


def test_killed_generate_and_encode_actors_leave_identical_outputs(
    reference, tiny_models, shared_data, tmp_path
):
    cfg = _cfg(
        str(tmp_path / "killed"),
        tiny_models,
        shared_data,
        ray={"progress_bars": False},
        stages={
            "generate": {"actors": 2, "num_cpus": 0.5},
            "encode": {"actors": 2, "num_cpus": 0.5},
        },
    )
    paths = RunPaths(cfg.root)
    generated = paths.generated(cfg.generator.name)
    passages = paths.embeddings(cfg.encoder.name, "passages")
    context = ray.init(  # the dashboard serves the state API that lists actors and their pids
        address="local",
        num_cpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=free_port(),
        log_to_driver=False,
    )
    dashboard = "http://" + context.dashboard_url
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["report"] = build(cfg)
        except BaseException as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    rng = np.random.default_rng(6)
    kills: list[tuple[str, int, str]] = []
    worker = threading.Thread(target=run)
    try:
        worker.start()
        # (table, parts committed before the kill): two kills while generating, two while encoding
        stages = {generated: "generate", passages: "encode-passages"}
        for url, after in ((generated, 1), (generated, 4), (passages, 1), (passages, 4)):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and worker.is_alive():
                if committed(url) >= after:
                    victim = kill_one_worker(dashboard, rng)
                    if victim is not None:
                        kills.append((stages[url], committed(url), victim["class_name"]))
                        break
                time.sleep(0.05)
        worker.join(timeout=240)
        assert not worker.is_alive(), "pipeline did not finish after its actors were killed"
    finally:
        ray.shutdown()
    print("kills (stage, parts committed, actor):", kills)
    assert "error" not in outcome, outcome.get("error")
    # every kill landed while its stage still had parts to do, so parts in flight were lost
    assert len(kills) == 4, kills
    assert all(done < PARTS for _, done, _ in kills), kills
    assert PartitionedTable(generated).is_complete() and PartitionedTable(passages).is_complete()

    got, want = tables(cfg, "generated"), tables(reference, "generated")
    assert got.equals(want)  # the same generated texts, row for row
    keys = ["pid", "lang", "k"]
    assert table_digest(got, keys) == table_digest(want, keys)
    rows = list(zip(*(got[key].to_pylist() for key in keys), strict=True))
    assert len(rows) == len(set(rows)), "duplicate generated rows"
    for what in (*STRATEGIES, "queries"):
        a, b = tables(cfg, what), tables(reference, what)
        ids = a["id"].to_pylist()
        assert len(ids) == len(set(ids)) == b.num_rows, what
        assert a.drop_columns(["vector"]).equals(b.drop_columns(["vector"])), what
        np.testing.assert_allclose(  # float sums may reorder across threads
            arrow_to_vectors(a["vector"]), arrow_to_vectors(b["vector"]), rtol=1e-4, atol=1e-5
        )
