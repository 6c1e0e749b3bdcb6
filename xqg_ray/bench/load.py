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

from xqg_ray.index.in_process import InProcessIndex
from xqg_ray.latency import latency_summary

HOST = "127.0.0.1"  # loopback only, by design: this script never sends traffic elsewhere


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
    return latency_summary(latencies, time.perf_counter() - started)


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
    return latency_summary(latencies, time.perf_counter() - started)


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
    return latency_summary(latencies, wall), failures


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


async def _send(
    session: aiohttp.ClientSession, url: str, body: str, timeout_s: float
) -> tuple[str, float, int | None, dict | None, dict]:
    """One POST: (outcome, ms, status, JSON answer or None, headers); outcome is accepted, shed
    (503), timeout (no answer within `timeout_s`), or error (any other status or failure)."""
    begin = time.perf_counter()
    try:
        async with session.post(
            url,
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            raw = await response.read()
            elapsed = (time.perf_counter() - begin) * 1000
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = None
            outcome = {200: "accepted", 503: "shed"}.get(response.status, "error")
            return outcome, elapsed, response.status, answer, dict(response.headers)
    except TimeoutError:
        return "timeout", (time.perf_counter() - begin) * 1000, None, None, {}
    except aiohttp.ClientError:
        return "error", (time.perf_counter() - begin) * 1000, None, None, {}


def _answer_ids(answer: dict | None) -> list[list[int]] | None:
    if not answer or "results" not in answer:
        return None
    return [[hit["id"] for hit in row] for row in answer["results"]]


async def overload(
    url: str,
    bodies: list[str],
    clients: int,
    requests: int,
    timeout_s: float,
    max_duration_s: float,
    expected: list[list[list[int]]] | None = None,
    obey_retry_after: bool = False,
) -> dict:
    """`clients` concurrent clients send `requests` POSTs in all (closed loop, each client its
    own connection, cycling through `bodies`), each with a `timeout_s` client timeout; no client
    starts a request after `max_duration_s`. Counts accepted, shed (503), timed out and failed
    requests, the accepted ones' latency, and how a 503 looks (Retry-After, JSON body). With
    `expected` (top-k ids per body), an accepted answer with other ids counts as wrong. With
    `obey_retry_after`, a client waits as long as a 503's Retry-After says before its next
    request."""
    counts = {"accepted": 0, "shed": 0, "timeout": 0, "error": 0}
    accepted_ms: list[float] = []
    shed_ms: list[float] = []
    shed_with_retry_after = shed_json = wrong = not_sent = 0
    errors: dict[str, int] = {}
    shed_example: dict = {}  # the first 503's Retry-After and body, as a client saw them
    share = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    deadline = time.perf_counter() + max_duration_s

    async def client(number: int, session: aiohttp.ClientSession) -> None:
        nonlocal shed_with_retry_after, shed_json, wrong, not_sent
        for sent in range(share[number]):
            if time.perf_counter() > deadline:
                not_sent += share[number] - sent
                return
            which = (number * 7919 + sent) % len(bodies)
            outcome, ms, status, answer, headers = await _send(
                session, url, bodies[which], timeout_s
            )
            counts[outcome] += 1
            if outcome == "accepted":
                accepted_ms.append(ms)
                if expected is not None and _answer_ids(answer) != expected[which]:
                    wrong += 1
            elif outcome == "shed":
                shed_ms.append(ms)
                retry_after = headers.get("Retry-After")
                shed_with_retry_after += retry_after is not None
                shed_json += isinstance(answer, dict) and "detail" in answer
                if not shed_example:
                    shed_example.update(retry_after=retry_after, body=answer)
                if obey_retry_after and retry_after is not None:
                    await asyncio.sleep(float(retry_after))
            elif outcome == "error":
                key = str(status) if status is not None else "connection"
                errors[key] = errors.get(key, 0) + 1

    started = time.perf_counter()
    sessions = [aiohttp.ClientSession() for _ in range(clients)]
    try:
        await asyncio.gather(*(client(i, s) for i, s in enumerate(sessions)))
    finally:
        wall = time.perf_counter() - started
        await asyncio.gather(*(s.close() for s in sessions))
    sent = sum(counts.values())
    return {
        "clients": clients,
        "sent": sent,
        "not_sent": not_sent,
        **counts,
        "shed_share": round(counts["shed"] / sent, 4) if sent else None,
        "wrong": wrong,
        "errors": errors,
        "accepted_qps": round(counts["accepted"] / wall, 2),
        "p50_ms": percentile_ms(accepted_ms, 50),
        "p99_ms": percentile_ms(accepted_ms, 99),
        "max_ms": round(max(accepted_ms), 3) if accepted_ms else None,
        "shed_p50_ms": percentile_ms(shed_ms, 50),
        "shed_with_retry_after": shed_with_retry_after,
        "shed_json": shed_json,
        "shed_example": shed_example or None,
        "wall_s": round(wall, 3),
    }


async def probe(url: str, body: str, duration_s: float, timeout_s: float) -> list[dict]:
    """One request at a time for `duration_s`: (seconds since the start, status, ms) each; a
    probe that times out is recorded with status None."""
    probes = []
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        while (at := time.perf_counter() - started) < duration_s:
            outcome, ms, status, _, _ = await _send(session, url, body, timeout_s)
            probes.append({"at_s": round(at, 3), "status": status, "ms": round(ms, 3)})
            if outcome != "accepted":
                await asyncio.sleep(0.05)  # a refused probe must not become load itself
    return probes
