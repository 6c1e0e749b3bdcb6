"""The pipeline-share benchmark: its arithmetic, and a tiny run of its whole measurement path."""

from __future__ import annotations

import json

import pytest

from xqg_ray.bench.pipeline_share import GOAL, STAGES, main, stage_row
from xqg_ray.config import RayConfig, StageResources
from xqg_ray.stages.runner import worker_threads


def side(work: float, wall: float, load: float = 0.0) -> dict[str, float]:
    return {"work_seconds": work, "wall_seconds": wall, "load_seconds": load}


def test_stage_row_takes_medians_and_ratios_of_rates():
    ray_extra = {"outside_tasks_seconds": 3.0, "actors": 1, "threads": 2, "engine": "e"}
    runs = [
        {"standalone": side(2.0, 3.0, 1.0), "ray": {**side(4.0, 8.0), **ray_extra}},
        {"standalone": side(4.0, 5.0, 1.0), "ray": {**side(4.0, 6.0), **ray_extra}},
        {"standalone": side(8.0, 9.0, 1.0), "ray": {**side(5.0, 7.0), **ray_extra}},
    ]
    row = stage_row("generate", 40, runs)
    assert row["standalone_steady_per_s"] == pytest.approx(10.0)  # 40 / median(2, 4, 8)
    assert row["ray_steady_per_s"] == pytest.approx(10.0)  # 40 / median(4, 4, 5)
    assert row["steady_ratio"] == pytest.approx(1.0) and row["steady_goal_met"]
    assert row["standalone_wall_per_s"] == pytest.approx(8.0)
    assert row["ray_wall_per_s"] == pytest.approx(40 / 7)
    assert row["wall_ratio"] == pytest.approx((40 / 7) / 8.0)
    slow = [{**run, "ray": {**run["ray"], "work_seconds": 8.0}} for run in runs]
    assert stage_row("generate", 40, slow)["steady_ratio"] == pytest.approx(0.5)
    assert not stage_row("generate", 40, slow)["steady_goal_met"]


def test_unset_threads_share_the_machine_among_the_pool():
    no_ray = RayConfig(enabled=False, num_cpus=4)
    assert worker_threads(StageResources(), no_ray, 1) == 4  # not the one CPU it reserves
    assert worker_threads(StageResources(threads=3), no_ray, 1) == 3  # an explicit value wins
    assert worker_threads(StageResources(num_cpus=2), no_ray, 4) == 2  # never below num_cpus
    assert worker_threads(StageResources(), no_ray, 3) == 1


@pytest.mark.slow  # the benchmark's whole path on Ray (about 30 s); its arithmetic and the
# threads rule it found stay in make test
def test_tiny_run_measures_both_sides_of_both_stages(tmp_path, shared_data):
    out = tmp_path / "share.json"
    results = main(
        ["--tiny", "--passages", "12", "--rounds", "1", "--cpus", "2", "--out", str(out)]
        + ["--xquad-dir", str(shared_data / "xquad")]
    )
    assert json.loads(out.read_text(encoding="utf-8")) == results
    assert results["date"] and results["machine"]["cpus_usable"] >= 1
    assert results["command"].startswith("python -m xqg_ray.bench.pipeline_share --tiny")
    assert "random-weight" in results["models"]["generator"]
    assert [row["stage"] for row in results["rows"]] == list(STAGES)
    for row in results["rows"]:
        (run,) = results["runs"][row["stage"]]
        alone, ray = run["standalone"], run["ray"]
        assert row["standalone_steady_per_s"] == pytest.approx(12 / alone["work_seconds"])
        assert row["ray_wall_per_s"] == pytest.approx(12 / ray["wall_seconds"])
        assert row["steady_ratio"] == pytest.approx(
            row["ray_steady_per_s"] / row["standalone_steady_per_s"]
        )
        assert row["steady_goal_met"] == (row["steady_ratio"] >= GOAL)
        # the wall clock holds the steady-state work and more: the load, or the actor start
        assert alone["wall_seconds"] >= alone["work_seconds"] > 0
        assert ray["wall_seconds"] > ray["work_seconds"] > 0
        # the default pool, one actor on a one-node Ray of 2 CPUs, runs on both of them
        assert row["ray_actors"] == 1 and row["ray_threads"] == 2
    assert results["rows"][0]["engine"].startswith("ctranslate2")
