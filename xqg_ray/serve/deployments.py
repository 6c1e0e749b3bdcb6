"""The service's worker deployments: one per FAISS shard, and the batched query encoder.

A handle call reaches one replica of one deployment, so scatter-gather over shards needs one
deployment per shard; replicas of a shard deployment add throughput and failover. Both batch
concurrent requests with `@serve.batch` so FAISS and the encoder see one call per batch. The
blocking work runs in a thread, keeping the replica's event loop free for health checks.
"""

from __future__ import annotations

import asyncio

import faiss
import numpy as np
from ray import serve

from xqg_ray.config import EncoderConfig
from xqg_ray.errors import ConfigError
from xqg_ray.index.search import search_index
from xqg_ray.index.shards import load_manifest, load_shard

DEFAULT_MAX_BATCH = 16


def threads_for(num_cpus: float) -> int:
    """Intra-op threads for a replica's CPU share (at least one)."""
    return max(1, int(num_cpus))


@serve.deployment(max_ongoing_requests=64)
class ShardSearcher:
    """One FAISS shard, loaded from the index URL (copied locally, checksummed, memory-mapped)."""

    def __init__(
        self,
        index_url: str,
        shard: int,
        local_dir: str | None,
        mmap: bool,
        threads: int,
        max_batch_size: int,
        batch_wait_timeout_s: float,
    ):
        faiss.omp_set_num_threads(threads)
        self.shard = shard
        self.expected_count = load_manifest(index_url)["shards"][shard]["count"]
        self.index = load_shard(index_url, shard, local_dir or None, mmap)
        self.search.set_max_batch_size(max_batch_size)
        self.search.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def _search_grouped(self, vectors: list[np.ndarray], depths: list[int]) -> list:
        """Requests of equal depth share one FAISS call; depth changes approximate indexes'
        results (HNSW searches max(efSearch, k)), so depths are never mixed."""
        answers: list = [None] * len(vectors)
        for depth in set(depths):
            members = [i for i, d in enumerate(depths) if d == depth]
            scores, ids = search_index(
                self.index, np.concatenate([vectors[i] for i in members]), depth
            )
            bounds = np.cumsum([len(vectors[i]) for i in members])[:-1]
            for i, part_scores, part_ids in zip(
                members, np.split(scores, bounds), np.split(ids, bounds), strict=True
            ):
                answers[i] = (part_scores, part_ids)
        return answers

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=0.0)
    async def search(self, vectors: list[np.ndarray], depths: list[int]) -> list:
        """Called as search(vectors, depth) -> (scores, ids) of this shard: global ids,
        -1-padded; Serve hands concurrent calls over as lists."""
        return await asyncio.to_thread(self._search_grouped, vectors, depths)

    def info(self) -> dict:
        context = serve.get_replica_context()
        return {
            "shard": self.shard,
            "count": int(self.index.ntotal),
            "replica": context.replica_id.to_full_id_str(),
        }

    def check_health(self) -> None:
        if self.index.ntotal != self.expected_count:
            raise RuntimeError(
                f"shard {self.shard} holds {self.index.ntotal} vectors, expected "
                f"{self.expected_count}"
            )


@serve.deployment(max_ongoing_requests=64)
class QueryEncoder:
    """Query texts to vectors with any Encoder backend, batched across concurrent requests."""

    def __init__(
        self,
        encoder_config: dict,
        expected_dim: int,
        threads: int,
        max_batch_size: int,
        batch_wait_timeout_s: float,
    ):
        import torch  # the encoder backends run on torch; cap its threads to the CPU share

        from xqg_ray.models.encoder import load_encoder

        torch.set_num_threads(threads)
        self.encoder = load_encoder(EncoderConfig.model_validate(encoder_config))
        if self.encoder.dim != expected_dim:
            raise ConfigError(
                f"encoder {self.encoder.name} makes {self.encoder.dim}-d vectors but the index "
                f"holds {expected_dim}-d vectors: serve the index with the encoder that built it"
            )
        self.encode.set_max_batch_size(max_batch_size)
        self.encode.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def _encode_all(self, requests: list[list[str]]) -> list[np.ndarray]:
        texts = [text for request in requests for text in request]
        vectors = np.asarray(self.encoder.encode_queries(texts), dtype=np.float32)
        bounds = np.cumsum([len(request) for request in requests])[:-1]
        return np.split(vectors, bounds)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=0.0)
    async def encode(self, requests: list[list[str]]) -> list[np.ndarray]:
        """Each request is a list of texts; one encoder call for the whole batch."""
        return await asyncio.to_thread(self._encode_all, requests)

    def check_health(self) -> None:
        probe = self.encoder.encode_queries(["health check"])
        if probe.shape != (1, self.encoder.dim) or not np.isfinite(probe).all():
            raise RuntimeError(f"encoder {self.encoder.name} returned an invalid probe vector")
