"""Requests against the search service and the in-process baseline, timed the same way.

The serve benchmarks and the search sweep all send `/search_vectors` requests from this module
and summarise latencies with one function, so their p50/p99 and QPS compare.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import faiss
import numpy as np

from xqg_ray.index.search import InProcessIndex

HOST = "127.0.0.1"  # loopback only, by design: this script never sends traffic elsewhere


def summarize(latencies_ms: list[float], wall_s: float) -> dict:
    p50, p95, p99 = np.percentile(latencies_ms, [50, 95, 99])
    return {
        "requests": len(latencies_ms),
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "p99_ms": round(float(p99), 3),
        "mean_ms": round(float(np.mean(latencies_ms)), 3),
        "qps": round(len(latencies_ms) / wall_s, 1),
    }


def in_process(index_url: str, queries: np.ndarray, k: int) -> dict:
    """The same queries, one per call, through InProcessIndex in this process.

    One FAISS thread, as in each shard replica: OpenMP threads spinning on a busy machine would
    make the baseline slower than the search it measures.
    """
    faiss.omp_set_num_threads(1)
    searcher = InProcessIndex(index_url)
    for query in queries[:20]:  # warm caches and mmapped pages
        searcher.search(query[None, :], k)
    latencies = []
    started = time.perf_counter()
    for query in queries:
        begin = time.perf_counter()
        searcher.search(query[None, :], k)
        latencies.append((time.perf_counter() - begin) * 1000)
    return summarize(latencies, time.perf_counter() - started)


async def healthz_floor(url: str, count: int = 100) -> dict:
    """Latency of GET /healthz: the HTTP proxy and router hops alone, no shard work."""
    latencies = []
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        for _ in range(count):
            begin = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
            latencies.append((time.perf_counter() - begin) * 1000)
    return summarize(latencies, time.perf_counter() - started)


async def http_load(
    url: str, queries: np.ndarray, k: int, concurrency: int, max_duration_s: float
) -> tuple[dict, int]:
    """Send each query once (`concurrency` at a time, stop early at the time cap)."""
    bodies = [json.dumps({"vectors": [q.tolist()], "k": k}) for q in queries]
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    failures = 0
    next_request = 0
    deadline = time.perf_counter() + max_duration_s

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_request, failures
        while next_request < len(bodies) and time.perf_counter() < deadline:
            body = bodies[next_request]
            next_request += 1
            begin = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.json()
                if response.status != 200 or answer.get("partial"):
                    failures += 1
                    continue
            latencies.append((time.perf_counter() - begin) * 1000)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return summarize(latencies, wall), failures
