"""The one latency summary of every probe and benchmark: count, p50/p95/p99/mean in ms, and QPS
when the wall time is known. One definition, so a p99 means the same in every results file; and
the one way a probe times calls one at a time."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def latency_summary(samples_ms: Sequence[float], wall_s: float | None = None) -> dict:
    """Percentiles (numpy's linear interpolation) of `samples_ms`, rounded to the microsecond;
    `qps` is the count over `wall_s`. An empty sample gives the count 0 and None elsewhere."""
    values = np.asarray(samples_ms, dtype=np.float64)
    out: dict = {"requests": int(values.size)}
    if values.size == 0:
        out.update(p50_ms=None, p95_ms=None, p99_ms=None, mean_ms=None)
    else:
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        out.update(
            p50_ms=round(float(p50), 3),
            p95_ms=round(float(p95), 3),
            p99_ms=round(float(p99), 3),
            mean_ms=round(float(values.mean()), 3),
        )
    if wall_s is not None:
        out["qps"] = round(values.size / wall_s, 1) if wall_s > 0 else None
    return out


def one_at_a_time(call: Callable[[int], Any], n: int) -> list[float]:
    """Milliseconds of `call(i)` for i in range(n), after one untimed warm-up call."""
    call(0)
    out = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        out.append(1000 * (time.perf_counter() - start))
    return out
