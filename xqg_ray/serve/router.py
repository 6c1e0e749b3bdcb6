"""The router ingress: validate, encode, scatter to every shard group, merge, answer.

Each shard-group deployment is asked concurrently. A failed call is retried (Serve then routes it
to a live replica) until the group's deadline; the shards of a group that still has not answered
are reported in `missing_shards` with `partial: true`, or the request fails with 503
(`on_missing_shard: error`). An answer is never silently incomplete.

Queries are encoded here (batched across concurrent requests) when the layout says so, which is
the default for a CPU encoder; with `search_in_router` the router also holds the shards itself.
Passage pids and texts come from a memory-mapped Arrow table (`xqg_ray.serve.corpus`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from xqg_ray.errors import ConfigError, InputError
from xqg_ray.index.search import (
    DistinctPassagePlan,
    check_k,
    check_queries,
    entry_map_of,
    keeps_max,
    merge_topk,
)
from xqg_ray.index.shard_cache import load_entry_map_cached
from xqg_ray.index.shard_group import ShardGroup
from xqg_ray.serve.config import ServeConfig
from xqg_ray.serve.corpus import PassageLookup, passage_table
from xqg_ray.serve.deployments import DEFAULT_MAX_BATCH, SHUTDOWN_S, TextEncoder
from xqg_ray.serve.http_api import (
    ROUTES,
    NotSupported,
    ServiceUnavailable,
    Shedding,
    build_api,
)
from xqg_ray.serve.stats import ServiceStats

logger = logging.getLogger("ray.serve")
RETRY_BACKOFF_S = 0.05


def resolve_token(cfg: ServeConfig) -> str | None:
    """The bearer token named by the config (env variable or file); None when auth is off."""
    if cfg.auth_token_env:
        token = os.environ.get(cfg.auth_token_env, "").strip()
        if not token:
            raise ConfigError(f"auth_token_env: environment variable {cfg.auth_token_env} is unset")
        return token
    if cfg.auth_token_file:
        try:
            token = Path(cfg.auth_token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"auth_token_file: cannot read {cfg.auth_token_file}: {exc}") from exc
        if not token:
            raise ConfigError(f"auth_token_file: {cfg.auth_token_file} is empty")
        return token
    return None


async def _call(method, *args):
    return await method.remote(*args)


def shedding_of(cfg: ServeConfig) -> Shedding | None:
    """A router replica's load shedding; None when its queue is unbounded (-1)."""
    if cfg.max_queued_requests < 0:
        return None
    return Shedding(cfg.max_queued_requests, cfg.retry_after_s)


def threads_for_router(cfg: ServeConfig) -> int:
    """Torch threads of an encoder inside the router: its CPU share, at least one."""
    return max(1, int(cfg.router_num_cpus))


@serve.deployment(max_ongoing_requests=128, graceful_shutdown_timeout_s=SHUTDOWN_S)
@serve.ingress()
class SearchRouter:
    """The service's HTTP ingress: encodes text queries, searches a small index itself or
    scatters to the shard-group deployments, and merges their answers exactly."""

    def __init__(
        self,
        config: dict,
        index_url: str,
        manifest: dict,
        corpus_url: str,
        layout: dict,
        groups: list[DeploymentHandle],
        encoder: DeploymentHandle | None,
        encoder_config: dict | None = None,
    ):
        self.cfg = ServeConfig.model_validate(config)
        self.limits = self.cfg.limits
        self.token = resolve_token(self.cfg)
        self.index_url = index_url
        self.manifest = manifest
        self.layout = layout
        self.dim = int(manifest["dimension"])
        self.keep_max = keeps_max(manifest["metric"])
        self.n_shards = len(manifest["shards"])
        local_dir = self.cfg.local_dir or None
        pairs = (
            None
            if manifest.get("entry_stride")
            else load_entry_map_cached(index_url, manifest, local_dir)
        )
        self.entry_map = entry_map_of(manifest, pairs)
        self.passages = PassageLookup(passage_table(index_url, manifest, corpus_url, local_dir))
        self.has_corpus = bool(corpus_url)
        self.group_shards: list[list[int]] = layout["groups"]
        self.groups = groups
        self.local = None
        if layout["search_in_router"]:
            self.group_shards = [list(range(self.n_shards))]
            self.local = ShardGroup(
                index_url, manifest, self.group_shards[0], local_dir, self.cfg.mmap
            )
        self.encoder = encoder
        self.text_encoder = None
        if encoder_config is not None:  # encode in this replica
            self.text_encoder = TextEncoder(encoder_config, self.dim, threads_for_router(self.cfg))
        for method in (self._encode_here, self._search_here):
            method.set_max_batch_size(self.cfg.max_batch_size)
            method.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)
        self.stats = ServiceStats(ROUTES)
        self.shedding = shedding_of(self.cfg)

    def __serve_build_asgi_app__(self):
        return build_api(self)

    def check_health(self) -> None:
        if self.local is not None:
            self.local.check()
        elif len(self.groups) != len(self.group_shards):
            raise RuntimeError("router has a handle per shard group missing")

    # ---- request validation -------------------------------------------------------------

    def _check_request(self, n_queries: int, k: int, include_text: bool) -> None:
        if n_queries > self.limits.max_queries:
            raise InputError(
                f"{n_queries} queries in one request; the limit is {self.limits.max_queries}"
            )
        check_k(k, self.limits.max_k)
        if include_text and not self.has_corpus:
            raise NotSupported(
                "include_text needs the corpus: start the service with `corpus` (the passages "
                "table) or with a run root as the index"
            )

    def _check_texts(self, queries: list[str]) -> None:
        for number, query in enumerate(queries):
            if not query.strip():
                raise InputError(f"queries[{number}] is empty")
            if len(query) > self.limits.max_query_chars:
                raise InputError(
                    f"queries[{number}] has {len(query)} characters; the limit is "
                    f"{self.limits.max_query_chars}"
                )

    # ---- search -------------------------------------------------------------------------

    async def search_texts(self, queries: list[str], k: int, include_text: bool) -> dict:
        if self.encoder is None and self.text_encoder is None:
            raise NotSupported(
                "this service has no query encoder (the index manifest names none and none was "
                "configured): send vectors to /search_vectors"
            )
        self._check_request(len(queries), k, include_text)
        self._check_texts(queries)
        try:
            if self.text_encoder is not None:
                vectors = await self._encode_here(queries)
            else:
                vectors = await asyncio.wait_for(
                    _call(self.encoder.encode, queries), self.cfg.shard_timeout_s
                )
        except Exception as exc:
            logger.warning("query encoder failed: %r", exc)
            raise ServiceUnavailable(f"the query encoder failed ({type(exc).__name__})") from exc
        return await self._answer(vectors, k, include_text)

    async def search_vectors(self, vectors: list[list[float]], k: int, include_text: bool) -> dict:
        self._check_request(len(vectors), k, include_text)
        lengths = sorted({len(vector) for vector in vectors})
        if lengths != [self.dim]:
            raise InputError(f"vectors must have dimension {self.dim}; got lengths {lengths}")
        return await self._answer(check_queries(np.asarray(vectors), self.dim), k, include_text)

    async def _answer(self, vectors: np.ndarray, k: int, include_text: bool) -> dict:
        scores, ids, missing = await self._search(vectors, k)
        if not np.isfinite(scores[ids >= 0]).all():
            raise InputError("vector values too large: scores overflow float32; scale them down")
        if missing:
            self.stats.partial_answers += 1
        pids = self.passages.pids(ids)
        texts = self.passages.texts(ids) if include_text else None
        results = []
        for row, (row_scores, row_ids, row_pids) in enumerate(zip(scores, ids, pids, strict=True)):
            hits = []
            for column, (score, passage, pid) in enumerate(
                zip(row_scores, row_ids, row_pids, strict=True)
            ):
                if passage < 0:
                    continue
                hit = {"id": int(passage), "pid": pid, "score": float(score)}
                if texts is not None:
                    hit["title"], hit["text"] = texts[row][column]
                hits.append(hit)
            results.append(hits)
        return {"results": results, "partial": bool(missing), "missing_shards": missing}

    async def _search(self, vectors: np.ndarray, k: int):
        """(scores, passage ids, missing shards); multivector entries collapsed exactly."""
        if self.entry_map is None:
            return await self._scatter(vectors, k)
        plan = DistinctPassagePlan(
            len(vectors),
            k,
            self.entry_map.max_entries_per_passage,
            int(self.manifest["n_total"]),
            self.keep_max,
        )
        missing: set[int] = set()
        while (request := plan.next_request()) is not None:
            rows, depth = request
            scores, entry_ids, absent = await self._scatter(vectors[rows], depth)
            missing.update(absent)
            plan.add(scores, self.entry_map.to_passages(entry_ids))
        return *plan.result(), sorted(missing)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=0.0)
    async def _encode_here(self, requests: list[list[str]]) -> list[np.ndarray]:
        """Concurrent requests' texts encoded in one call, in a thread (the loop stays free)."""
        return await asyncio.to_thread(self.text_encoder.encode_all, requests)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=0.0)
    async def _search_here(self, vectors: list[np.ndarray], depths: list[int]) -> list:
        if self.local.is_small(sum(len(v) for v in vectors)):
            return self.local.search_grouped(vectors, depths)  # quicker than a thread hand-off
        return await asyncio.to_thread(self.local.search_grouped, vectors, depths)

    async def _scatter(self, vectors: np.ndarray, depth: int):
        if self.local is not None:
            if self.stats.in_flight <= 1 and self.local.is_small(len(vectors)):
                # alone and small: search inline, as batching would only add its own cost
                scores, ids = self.local.search(vectors, depth)
            else:
                scores, ids = await self._search_here(vectors, depth)
            return scores, ids, []
        answers = await asyncio.gather(
            *(self._ask_group(number, vectors, depth) for number in range(len(self.groups)))
        )
        missing = sorted(
            shard
            for number, answer in enumerate(answers)
            if answer is None
            for shard in self.group_shards[number]
        )
        if len(missing) == self.n_shards or (missing and self.cfg.on_missing_shard == "error"):
            raise ServiceUnavailable(f"shards {missing} did not answer", missing)
        scores, ids = merge_topk([a for a in answers if a is not None], depth, self.keep_max)
        return scores, ids, missing

    async def _ask_group(self, number: int, vectors: np.ndarray, depth: int):
        """One group's answer, retried until its deadline; None when it cannot answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.shard_timeout_s
        shards = self.group_shards[number]
        for attempt in range(self.cfg.shard_retries + 1):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                return await asyncio.wait_for(
                    _call(self.groups[number].search, vectors, depth), remaining
                )
            except TimeoutError:
                logger.warning(
                    "shards %s: no answer within %.1f s", shards, self.cfg.shard_timeout_s
                )
                break
            except Exception as exc:  # a dead replica, or a failure inside the group
                logger.warning("shards %s: attempt %d failed: %r", shards, attempt + 1, exc)
                await asyncio.sleep(RETRY_BACKOFF_S * (attempt + 1))
        for shard in shards:
            self.stats.shard_failures[shard] += 1
        return None

    # ---- introspection ------------------------------------------------------------------

    def health(self) -> dict:
        has_encoder = self.encoder is not None or self.text_encoder is not None
        return {"status": "ok", "shards": self.n_shards, "encoder": has_encoder}

    def stats_snapshot(self) -> dict:
        return {
            "index_url": self.index_url,
            "manifest": self.manifest,
            "shards": [
                {"shard": number, "count": shard["count"], "bytes": shard["bytes"]}
                for number, shard in enumerate(self.manifest["shards"])
            ],
            "replicas_per_shard": (
                self.cfg.autoscaling.model_dump()
                if self.cfg.autoscaling
                else self.cfg.replicas_per_shard
            ),
            "layout": self.layout,
            "router_replica": serve.get_replica_context().replica_id.unique_id,
            **self.stats.snapshot(),
        }
