"""Query-time cost per strategy: query encoding, in-process search latency and throughput.

Every strategy answers with the same query encoder, so only the index differs: one entry per
passage (`dense`, `xqg`, `expand`) or 1 + languages x n entries per passage (`multivector`, which
also searches deeper to return k distinct passages). Strategies are timed in interleaved rounds on
the same queries, so machine noise hits them alike; the spread of the per-round medians is the
noise band a difference must exceed.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from xqg_ray.latency import latency_summary, one_at_a_time

K = 10  # passages per query, as a search service answers
BATCH = 32
ROUNDS = 3


def query_encoding_latency(encoder, texts: list[str], n: int) -> dict[str, Any]:
    """One query per call (what a service does per request), and per query in batches of 32."""
    texts = (texts * (n // max(len(texts), 1) + 1))[:n]
    single = one_at_a_time(lambda i: encoder.encode_queries([texts[i]]), n)
    batches = [texts[i : i + BATCH] for i in range(0, n, BATCH)]
    start = time.perf_counter()
    for batch in batches:
        encoder.encode_queries(batch)
    batched_ms = 1000 * (time.perf_counter() - start) / n
    return {"single": latency_summary(single), "batch32_per_query_ms": batched_ms}


def search_latency(
    searchers: dict[str, Any], queries: np.ndarray, threads: int = 1
) -> dict[str, dict[str, Any]]:
    """Per strategy: one query per call (p50/p99, noise band), per-query time in batches of 32,
    and QPS in batches; strategies interleaved round by round."""
    import faiss

    faiss.omp_set_num_threads(threads)
    n = len(queries)
    single: dict[str, list[float]] = {s: [] for s in searchers}
    round_p50: dict[str, list[float]] = {s: [] for s in searchers}
    batched: dict[str, list[float]] = {s: [] for s in searchers}
    for _ in range(ROUNDS):
        for strategy, searcher in searchers.items():
            times = one_at_a_time(lambda i, s=searcher: s.search(queries[i : i + 1], K), n)
            single[strategy] += times
            round_p50[strategy].append(float(np.percentile(times, 50)))
            start = time.perf_counter()
            for i in range(0, n, BATCH):
                searcher.search(queries[i : i + BATCH], K)
            batched[strategy].append((time.perf_counter() - start) / n)
    out = {}
    for strategy, searcher in searchers.items():
        per_query_s = float(np.median(batched[strategy]))
        out[strategy] = {
            "entries": int(searcher.manifest["n_total"]),
            "single": latency_summary(single[strategy]),
            "noise_ms": (max(round_p50[strategy]) - min(round_p50[strategy])) / 2,
            "batch32_per_query_ms": 1000 * per_query_s,
            "qps_batch32": 1.0 / per_query_s,
        }
    return out


def measure_query_cost(cfg, hardware: str, query_texts: list[str], vectors: np.ndarray) -> dict:
    """The probe for a built run: encoder latency once, search latency for every strategy."""
    from xqg_ray.index.in_process import InProcessIndex
    from xqg_ray.models.encoder import load_encoder
    from xqg_ray.stages.index import index_url

    n = min(cfg.cost.latency_queries, len(vectors))
    encoder = load_encoder(cfg.encoder)
    searchers = {s: InProcessIndex(index_url(cfg, s)) for s in cfg.augment.strategies}
    search = search_latency(searchers, np.ascontiguousarray(vectors[:n]))
    base = search.get("dense")
    if base:
        for row in search.values():
            row["p50_x_dense"] = row["single"]["p50_ms"] / base["single"]["p50_ms"]
            row["qps_x_dense"] = row["qps_batch32"] / base["qps_batch32"]
    return {
        "hardware": hardware,
        "k": K,
        "faiss_threads": 1,
        "queries": n,
        "rounds": ROUNDS,
        "encoder": {
            "name": cfg.encoder.name,
            **query_encoding_latency(encoder, query_texts, n),
            # after the probe: the single-text engine is loaded by then
            "engine": getattr(encoder, "single_engine", cfg.encoder.backend),
            "batch_engine": getattr(encoder, "engine", cfg.encoder.backend),
        },
        "search": search,
    }
