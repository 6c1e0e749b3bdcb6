"""The kill-at-scale script's driver kill at a tiny size, on a local root: the driver and its Ray
are SIGKILLed mid-build, the rerun redoes exactly the parts that were lost, and every file it
leaves (parts, records, manifests, index shards) is byte-identical to an undisturbed build."""

from __future__ import annotations

import json

import pytest

from xqg_ray.bench.kill_at_scale import main

# the benchmark's own check (three driver processes, about 70 s): `make test-slow`; the driver
# kill itself is tested in `make test` by test_pipeline_cluster.py
pytestmark = pytest.mark.slow


def test_killed_driver_resumes_to_identical_bytes_redoing_only_lost_parts(tmp_path):
    out = tmp_path / "kill.json"
    results = main(
        [
            "--size", "3000",
            "--storages", "local",
            "--faults", "driver",
            "--out", str(out),
            "--workdir", str(tmp_path / "work"),
            "--passages-per-part", "250",
            "--shards", "4",
            "--nlist", "16",
        ]
    )  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    clean, killed = results["runs"]
    assert (clean["run"], killed["run"]) == ("clean", "driver")
    assert clean["checksum_mismatches"] == [] and clean["checksums_named"] > clean["files"] / 2
    # the kill landed mid-build: some parts were finished and kept, some were lost
    assert 0 < killed["parts_lost"] < killed["parts_total"], killed["stages"]
    for stage, row in killed["stages"].items():
        assert row["redone"] == row["lost"] == row["parts"] - row["finished_before_rerun"], stage
    assert killed["only_lost_parts_redone"]
    assert killed["escaped_killed_after_limit"] == []
    assert killed["checksum_mismatches"] == []
    assert killed["identical"], (killed["differing"], killed["missing"], killed["extra"])
    assert killed["parts_compared"] > 0 and killed["index_files_compared"] > 0
    assert killed["files_compared"] == clean["files"]
