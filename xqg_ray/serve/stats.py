"""Request counts and latency percentiles of one router replica, for `GET /stats`."""

from __future__ import annotations

from collections import Counter, defaultdict, deque

import numpy as np

LATENCY_WINDOW = 10_000  # most recent requests per route kept for percentiles


class ServiceStats:
    def __init__(self, routes: list[str]):
        self.routes = set(routes)
        self.status_counts: dict[str, Counter] = defaultdict(Counter)
        self.latencies_ms: dict[str, deque] = defaultdict(lambda: deque(maxlen=LATENCY_WINDOW))
        self.partial_answers = 0
        self.in_flight = 0  # HTTP requests inside this replica now (set by the middleware)
        self.shard_failures: Counter = Counter()

    def record(self, path: str, status: int, elapsed_ms: float) -> None:
        route = path if path in self.routes else "other"  # unknown paths must not grow the dict
        self.status_counts[route][str(status)] += 1
        if status < 400:
            self.latencies_ms[route].append(elapsed_ms)

    def snapshot(self) -> dict:
        latency = {}
        for route, values in self.latencies_ms.items():
            if values:
                p50, p95, p99 = np.percentile(np.fromiter(values, float), [50, 95, 99])
                latency[route] = {
                    "count": len(values),
                    "p50": round(float(p50), 3),
                    "p95": round(float(p95), 3),
                    "p99": round(float(p99), 3),
                }
        return {
            "requests": {route: dict(counts) for route, counts in self.status_counts.items()},
            "latency_ms": latency,
            "partial_answers": self.partial_answers,
            "shard_failures": {str(shard): n for shard, n in sorted(self.shard_failures.items())},
        }
