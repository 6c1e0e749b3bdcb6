"""Evaluation queries through the search service: the run the HTTP endpoint gives.

The service encodes the query texts itself (its own encoder replica), scatters to its shard
deployments and merges, so its run checks the whole serving path against the offline search.
Either a service is started here for each index (one Serve instance on a free loopback port, the
application replaced per index, Serve shut down at the end), or `evaluate.service_url` names a
running one; its `/stats` must report the same index manifest as the one evaluated.
"""

from __future__ import annotations

import os
import string
from typing import Any

import pyarrow as pa

from xqg_ray.config import RunConfig
from xqg_ray.errors import ConfigError, XqgError
from xqg_ray.evaluate.runs import RUN_SCHEMA, sorted_run
from xqg_ray.index.shards import load_manifest
from xqg_ray.serve.local import free_port

APP_NAME = "xqg-evaluate"
TOKEN_ENV = "XQG_RAY_SERVE_TOKEN"  # the bearer token, as `xqg-ray search` reads it


def hits_table(qids: list[str], results: list[list[dict[str, Any]]]) -> pa.Table:
    """The service's JSON hits (best first) as run rows."""
    rows: dict[str, list] = {"qid": [], "pid": [], "score": [], "rank": []}
    for qid, hits in zip(qids, results, strict=True):
        for rank, hit in enumerate(hits, 1):
            rows["qid"].append(qid)
            rows["pid"].append(hit["pid"])
            rows["score"].append(hit["score"])
            rows["rank"].append(rank)
    return pa.table(rows, schema=RUN_SCHEMA)


def search_texts(url: str, queries: pa.Table, depth: int, batch_size: int) -> pa.Table:
    """Every (qid, text) query through the service at `url`, `batch_size` texts per request."""
    from xqg_ray.serve.client import SearchClient

    client = SearchClient(url, token=os.environ.get(TOKEN_ENV))
    tables = []
    for start in range(0, queries.num_rows, batch_size):
        batch = queries.slice(start, batch_size)
        answer = client.search(batch["text"].to_pylist(), k=depth)
        if answer.get("partial"):
            raise XqgError(
                f"{url}: partial answer (shards {answer.get('missing_shards')} missing): a run "
                "with missing shards cannot be evaluated"
            )
        tables.append(hits_table(batch["qid"].to_pylist(), answer["results"]))
    return sorted_run(pa.concat_tables(tables)) if tables else RUN_SCHEMA.empty_table()


def template_fields(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


class ServiceQueryRunner:
    """Runs through the service for each (strategy, passage languages) index; use as a context
    manager so a service started here is always shut down."""

    def __init__(self, cfg: RunConfig, indexes: int):
        self.cfg = cfg
        self.template = cfg.evaluate.service_url
        self.port: int | None = None
        fields = template_fields(self.template)
        unknown = fields - {"strategy", "languages"}
        if unknown:
            raise ConfigError(
                f"evaluate.service_url: unknown placeholder(s) {sorted(unknown)}; use {{strategy}} "
                "and {languages}"
            )
        if self.template and not fields and indexes > 1:
            raise ConfigError(
                f"evaluate.service_url serves one index but this evaluation needs {indexes} "
                "(strategies x passage-language sets): put {strategy} and {languages} in the URL "
                "or leave it empty to start a service per index"
            )

    def __enter__(self) -> ServiceQueryRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.port is not None:
            from ray import serve

            serve.shutdown()
            self.port = None

    def run(self, strategy: str, languages: str, index_url: str, queries: pa.Table) -> pa.Table:
        """`queries` (qid, text) through the service for the index at `index_url`."""
        depth = self.cfg.search.depth
        batch = self.cfg.evaluate.service_batch_size
        if self.template:
            url = self.template.format(strategy=strategy, languages=languages)
            check_served_index(url, index_url)
            return search_texts(url, queries, depth, batch)
        from ray import serve

        url = self._deploy(index_url)
        try:
            return search_texts(url, queries, depth, batch)
        finally:
            serve.delete(APP_NAME)

    def _deploy(self, index_url: str) -> str:
        from ray import serve

        from xqg_ray.serve.config import Limits, ServeConfig
        from xqg_ray.serve.local import run_server
        from xqg_ray.stages.runner import ensure_ray

        if self.port is None:
            ensure_ray(self.cfg.ray)
            if serve.status().proxies:
                raise ConfigError(
                    "Ray Serve already runs on this cluster: set evaluate.service_url to its "
                    "search application instead of starting another"
                )
            self.port = free_port()
        batch = self.cfg.evaluate.service_batch_size
        serve_cfg = ServeConfig(
            index=index_url,
            port=self.port,
            app_name=APP_NAME,
            max_batch_size=batch,
            limits=Limits(max_queries=batch, max_k=max(self.cfg.search.depth, 1000)),
        )
        return run_server(serve_cfg, blocking=False)


def check_served_index(url: str, index_url: str) -> None:
    """A given service must serve the evaluated index: same parameters, same entries."""
    from xqg_ray.serve.client import SearchClient

    served = SearchClient(url, token=os.environ.get(TOKEN_ENV)).stats()["manifest"]
    expected = load_manifest(index_url)
    for key in ("meta", "n_total"):
        if served.get(key) != expected.get(key):
            raise ConfigError(
                f"evaluate.service_url: {url} serves an index whose {key} differs from "
                f"{index_url}: {served.get(key)!r} vs {expected.get(key)!r}"
            )
