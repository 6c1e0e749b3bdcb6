"""The serve-modes benchmark's bookkeeping, without Ray: medians and ratios over repetitions,
the goal check, and each mode's environment (HAProxy's ports and paths per run)."""

from __future__ import annotations

import os
import shutil

import pytest

from xqg_ray.bench.serve_modes import MODES, goal, mode_env, summarize_modes


def child(mode: str, p50: dict[str, float], qps: float = 100.0) -> dict:
    rows = [
        {"path": "ingress", "system": system, "concurrency": 1, "p50_ms": value}
        | {"p99_ms": 2 * value, "qps": qps, "failed_or_partial": 0}
        for system, value in p50.items()
    ]
    return {"mode": mode, "rows": rows}


def test_medians_ratios_and_goal_over_repetitions():
    children = [
        child("default", {"floor": 6.0, "service 1 shard": 8.0, "service 4 shards": 9.0}),
        child("haproxy", {"floor": 1.0, "service 1 shard": 1.8, "service 4 shards": 2.5}, 400),
        child("default", {"floor": 7.0, "service 1 shard": 9.0, "service 4 shards": 9.5}),
        child("haproxy", {"floor": 1.2, "service 1 shard": 2.2, "service 4 shards": 2.9}, 400),
        child("default", {"floor": 6.5, "service 1 shard": 8.4, "service 4 shards": 9.9}),
        child("haproxy", {"floor": 1.1, "service 1 shard": 2.0, "service 4 shards": 2.7}, 400),
    ]
    summary = summarize_modes(children)
    row = {(r["mode"], r["system"]): r for r in summary}
    assert row["default", "service 1 shard"]["p50_ms"] == 8.4  # the median of 8.0, 9.0, 8.4
    assert row["haproxy", "service 1 shard"]["p50_ms_each"] == [1.8, 2.2, 2.0]
    assert row["haproxy", "service 1 shard"]["p50_ratio_to_default"] == round(2.0 / 8.4, 3)
    assert row["haproxy", "floor"]["qps_ratio_to_default"] == 4.0
    assert row["default", "service 4 shards"]["over_fastest_floor_ms"] == pytest.approx(9.5 - 1.1)
    verdict = goal(summary)
    assert verdict["fastest_floor"] == {"mode": "haproxy", "path": "ingress", "p50_ms": 1.1}
    assert verdict["service 1 shard"]["met"] is True  # 2.0 <= 1.1 + 1
    assert verdict["service 4 shards"]["met"] is False  # 2.7 > 2.1


def test_each_mode_gets_its_variables_and_haproxy_its_own_ports_and_paths(monkeypatch):
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")  # the caller's settings never leak in
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in mode_env("default")
    assert mode_env("throughput")["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    env = mode_env("haproxy")
    try:
        assert {k: env[k] for k in MODES["haproxy"]} == MODES["haproxy"]
        ports = {env[f"RAY_SERVE_HAPROXY_{n}_PORT"] for n in ("STATS", "METRICS")}
        assert len(ports | {env["XQG_BENCH_PORT"]}) == 3 and "8404" not in ports
        base = env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]
        assert os.path.isdir(base)
        for name in ("SOCKET_PATH", "METRICS_SOCKET_PATH"):
            path = env[f"RAY_SERVE_HAPROXY_{name}"]
            assert path.startswith(base)
            assert len(path) + 57 <= 97  # Serve inserts the node id; HAProxy's limit is 97
    finally:
        shutil.rmtree(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"], ignore_errors=True)
