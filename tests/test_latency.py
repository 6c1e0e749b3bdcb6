"""The one latency summary: numpy's percentiles, rounded to the microsecond, QPS from wall time."""

from __future__ import annotations

from xqg_ray.latency import latency_summary


def test_percentiles_mean_and_qps_of_a_known_sample():
    summary = latency_summary([float(ms) for ms in range(1, 101)], wall_s=2.0)
    assert summary == {
        "requests": 100,
        "p50_ms": 50.5,
        "p95_ms": 95.05,
        "p99_ms": 99.01,
        "mean_ms": 50.5,
        "qps": 50.0,
    }


def test_an_empty_sample_has_no_percentiles_and_no_wall_time_no_qps():
    assert latency_summary([]) == {
        "requests": 0,
        "p50_ms": None,
        "p95_ms": None,
        "p99_ms": None,
        "mean_ms": None,
    }
