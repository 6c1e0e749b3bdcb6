"""Start the search service on a run's index, query it, and compare with the offline run.

The demo's end-to-end check: the HTTP service (its own query encoder, the layout it picks for
the index, the router's merge) must rank exactly as the offline batch search did for the same
queries; then its latency per request, for the research report.
"""

from __future__ import annotations

from typing import Any

from xqg_ray.config import RunConfig
from xqg_ray.evaluate.runs import (
    REDUCED_PRECISION_TOLERANCE,
    SCORE_TOLERANCE,
    max_score_gap,
    run_differences,
    run_table,
)
from xqg_ray.evaluate.service_search import hits_table
from xqg_ray.index.in_process import InProcessIndex
from xqg_ray.latency import latency_summary, one_at_a_time
from xqg_ray.paths import RunPaths
from xqg_ray.schema import arrow_to_vectors
from xqg_ray.serve.local import free_port
from xqg_ray.storage import PartitionedTable


def check_service(
    cfg: RunConfig, strategy: str, n_queries: int = 8, k: int = 10, latency_requests: int = 0
) -> dict[str, Any]:
    """Serve `strategy`'s index on loopback, send `n_queries` evaluation queries in one request,
    and count the queries ranked exactly as offline (`runs.run_differences`: same pids, scores
    within 1e-3; with a bf16 or int8 encoder, scores within 5e-3 and swaps only among passages
    scored within 5e-3 of each other). With `latency_requests`, then time that many sequential
    one-query requests of each route."""
    from ray import serve

    from xqg_ray.models.encoder import reduced_precision
    from xqg_ray.serve.client import SearchClient
    from xqg_ray.serve.config import ServeConfig
    from xqg_ray.serve.local import run_server

    paths = RunPaths(cfg.root)
    index_url = paths.index(cfg.encoder.name, strategy)
    texts = PartitionedTable(paths.queryset).read_part("00000").slice(0, n_queries)
    encoded = PartitionedTable(paths.embeddings(cfg.encoder.name, "queries")).read_part("00000")
    qids = texts["qid"].to_pylist()  # part 0 of the queries and their vectors hold the same rows
    searcher = InProcessIndex(index_url)
    scores, ids = searcher.search(arrow_to_vectors(encoded["vector"])[:n_queries], k)
    offline = run_table(qids, scores, searcher.pids(ids))
    serve_cfg = ServeConfig(
        index=index_url,
        corpus=paths.corpus("passages"),
        port=free_port(),
        max_batch_size=max(16, n_queries),
    )
    url = run_server(serve_cfg, blocking=False)
    try:
        client = SearchClient(url)
        answer = client.search(texts["text"].to_pylist(), k=k)
        latency = request_latency(client, texts["text"].to_pylist(), encoded, latency_requests, k)
    finally:
        serve.shutdown()
    served = hits_table(qids, answer["results"])
    lossy = reduced_precision(cfg.encoder)
    tolerance = REDUCED_PRECISION_TOLERANCE if lossy else SCORE_TOLERANCE
    differences = run_differences(
        offline, served, score_tolerance=tolerance, tie_tolerance=tolerance if lossy else 0.0
    )
    return {
        "strategy": strategy,
        "url": url,
        "queries": len(texts),
        "agree": len(texts) - len(differences),
        "tolerance": tolerance,
        "differences": sorted(differences.values()),
        "partial": answer["partial"],
        "max_score_gap": max_score_gap(offline, served),
        "latency": latency,
    }


def request_latency(client, texts: list[str], encoded, requests: int, k: int) -> dict[str, Any]:
    """p50/p99 of sequential one-query requests: `/search` (text, encoded by the service) and
    `/search_vectors` (the index path alone). Empty when `requests` is 0."""
    if requests <= 0:
        return {}
    vectors = arrow_to_vectors(encoded["vector"])
    routes = {
        "search": lambda i: client.search([texts[i % len(texts)]], k=k),
        "search_vectors": lambda i: client.search_vectors(vectors[i % len(vectors)][None], k=k),
    }
    return {name: latency_summary(one_at_a_time(call, requests)) for name, call in routes.items()}
