"""The router ingress: validate, encode, scatter to every shard, merge, answer.

Each shard deployment is asked concurrently. A failed call is retried (Serve then routes it to a
live replica) until the shard's deadline; a shard that still has not answered is reported in
`missing_shards` with `partial: true`, or the request fails with 503 (`on_missing_shard: error`).
An answer is never silently incomplete.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from xqg_ray import storage
from xqg_ray.errors import ConfigError, InputError
from xqg_ray.index.search import (
    EntryMap,
    PassageSearch,
    PidMap,
    check_k,
    check_queries,
    keeps_max,
    merge_topk,
)
from xqg_ray.index.shards import load_entry_map, load_manifest, load_pid_map
from xqg_ray.serve.config import ServeConfig
from xqg_ray.serve.http_api import ROUTES, NotSupported, ServiceUnavailable, build_api
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


def load_passages(corpus_url: str) -> dict[str, tuple[str, str]]:
    """pid -> (title, text) of the corpus passages, for answers with `include_text`."""
    table = storage.read_table(corpus_url, columns=["pid", "title", "text"])
    return dict(
        zip(
            table["pid"].to_pylist(),
            zip(table["title"].to_pylist(), table["text"].to_pylist(), strict=True),
            strict=True,
        )
    )


async def _call(method, *args):
    return await method.remote(*args)


@serve.deployment(max_ongoing_requests=128)
@serve.ingress()
class SearchRouter:
    def __init__(
        self,
        config: dict,
        index_url: str,
        corpus_url: str,
        shards: list[DeploymentHandle],
        encoder: DeploymentHandle | None,
    ):
        self.cfg = ServeConfig.model_validate(config)
        self.limits = self.cfg.limits
        self.token = resolve_token(self.cfg)
        self.index_url = index_url
        self.manifest = load_manifest(index_url)
        self.dim = int(self.manifest["dimension"])
        self.keep_max = keeps_max(self.manifest["metric"])
        local_dir = self.cfg.local_dir or None
        pairs = load_entry_map(index_url, self.manifest, local_dir)
        self.entry_map = EntryMap(pairs) if pairs is not None else None
        self.pid_map = PidMap(load_pid_map(index_url, self.manifest, local_dir))
        self.passages = load_passages(corpus_url) if corpus_url else None
        self.shards = shards
        self.encoder = encoder
        self.stats = ServiceStats(ROUTES)

    def __serve_build_asgi_app__(self):
        return build_api(self)

    def check_health(self) -> None:
        if len(self.shards) != len(self.manifest["shards"]):
            raise RuntimeError("router has a handle per shard missing")

    # ---- request validation -------------------------------------------------------------

    def _check_request(self, n_queries: int, k: int, include_text: bool) -> None:
        if n_queries > self.limits.max_queries:
            raise InputError(
                f"{n_queries} queries in one request; the limit is {self.limits.max_queries}"
            )
        check_k(k, self.limits.max_k)
        if include_text and self.passages is None:
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
        if self.encoder is None:
            raise NotSupported(
                "this service has no query encoder (the index manifest names none and none was "
                "configured): send vectors to /search_vectors"
            )
        self._check_request(len(queries), k, include_text)
        self._check_texts(queries)
        try:
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
        pids = self.pid_map.lookup(ids)
        results = []
        for row_scores, row_ids, row_pids in zip(scores, ids, pids, strict=True):
            hits = []
            for score, passage, pid in zip(row_scores, row_ids, row_pids, strict=True):
                if passage < 0:
                    continue
                hit = {"id": int(passage), "pid": pid, "score": float(score)}
                if include_text:
                    hit["title"], hit["text"] = self.passages.get(pid, (None, None))
                hits.append(hit)
            results.append(hits)
        return {"results": results, "partial": bool(missing), "missing_shards": missing}

    async def _search(self, vectors: np.ndarray, k: int):
        """(scores, passage ids, missing shards); multivector entries collapsed exactly."""
        if self.entry_map is None:
            return await self._scatter(vectors, k)
        plan = PassageSearch(
            len(vectors), k, self.entry_map, int(self.manifest["n_total"]), self.keep_max
        )
        missing: set[int] = set()
        while (request := plan.next_request()) is not None:
            rows, depth = request
            scores, entry_ids, absent = await self._scatter(vectors[rows], depth)
            missing.update(absent)
            plan.add(scores, entry_ids)
        return *plan.result(), sorted(missing)

    async def _scatter(self, vectors: np.ndarray, depth: int):
        answers = await asyncio.gather(
            *(self._ask_shard(number, vectors, depth) for number in range(len(self.shards)))
        )
        missing = [number for number, answer in enumerate(answers) if answer is None]
        if len(missing) == len(self.shards) or (missing and self.cfg.on_missing_shard == "error"):
            raise ServiceUnavailable(f"shards {missing} did not answer", missing)
        scores, ids = merge_topk([a for a in answers if a is not None], depth, self.keep_max)
        return scores, ids, missing

    async def _ask_shard(self, number: int, vectors: np.ndarray, depth: int):
        """One shard's answer, retried until its deadline; None when it cannot answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.shard_timeout_s
        for attempt in range(self.cfg.shard_retries + 1):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                return await asyncio.wait_for(
                    _call(self.shards[number].search, vectors, depth), remaining
                )
            except TimeoutError:
                logger.warning(
                    "shard %d: no answer within %.1f s", number, self.cfg.shard_timeout_s
                )
                break
            except Exception as exc:  # a dead replica, or a failure inside the shard
                logger.warning("shard %d: attempt %d failed: %r", number, attempt + 1, exc)
                await asyncio.sleep(RETRY_BACKOFF_S * (attempt + 1))
        self.stats.shard_failures[number] += 1
        return None

    # ---- introspection ------------------------------------------------------------------

    def health(self) -> dict:
        return {"status": "ok", "shards": len(self.shards), "encoder": self.encoder is not None}

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
            "router_replica": serve.get_replica_context().replica_id.unique_id,
            **self.stats.snapshot(),
        }
