"""The service's worker deployments: shard groups, and the batched query encoder.

A shard-group replica holds one or more shards (contiguous, see `xqg_ray.serve.layout`) and
searches them in parallel threads (FAISS releases the GIL), merging their answers exactly with
global ids (`merge_topk`, -1 where a shard has fewer than k). A handle call reaches one replica of
one deployment, so scatter-gather over groups needs one deployment per group; replicas of a group
add throughput and failover. Both deployments batch concurrent requests with `@serve.batch`, so
FAISS and the encoder see one call per batch; the blocking work runs in a thread, keeping the
replica's event loop free for health checks.
"""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from xqg_ray.config import EncoderConfig
from xqg_ray.errors import ConfigError
from xqg_ray.index.shard_group import ShardGroup

DEFAULT_MAX_BATCH = 16
SHUTDOWN_S = 2.0  # graceful shutdown of a replica: in-flight searches take milliseconds


def threads_for(num_cpus: float) -> int:
    """Intra-op threads for a replica's CPU share (at least one)."""
    return max(1, int(num_cpus))


@serve.deployment(max_ongoing_requests=64, graceful_shutdown_timeout_s=SHUTDOWN_S)
class ShardGroupDeployment:
    """The Serve deployment of one shard group: each replica holds a `ShardGroup`, loaded from
    the node's shard cache (checksummed once, memory-mapped), and batches concurrent calls."""

    def __init__(
        self,
        index_url: str,
        manifest: dict,
        shards: list[int],
        local_dir: str | None,
        mmap: bool,
        max_batch_size: int,
        batch_wait_timeout_s: float,
    ):
        self.group = ShardGroup(index_url, manifest, shards, local_dir or None, mmap)
        self.search.set_max_batch_size(max_batch_size)
        self.search.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=0.0)
    async def search(self, vectors: list[np.ndarray], depths: list[int]) -> list:
        """Called as search(vectors, depth) -> (scores, ids) of this group: global ids,
        -1-padded; Serve hands concurrent calls over as lists."""
        if self.group.is_small(sum(len(v) for v in vectors)):
            return self.group.search_grouped(vectors, depths)  # quicker than a thread hand-off
        return await asyncio.to_thread(self.group.search_grouped, vectors, depths)

    def info(self) -> dict:
        context = serve.get_replica_context()
        return {
            "shards": self.group.shards,
            "count": int(sum(index.ntotal for index in self.group.indexes)),
            "replica": context.replica_id.to_full_id_str(),
        }

    def check_health(self) -> None:
        self.group.check()


class TextEncoder:
    """Query texts to vectors with any Encoder backend (in the router or its own deployment)."""

    def __init__(self, encoder_config: dict, expected_dim: int, threads: int):
        import torch  # the encoder backends run on torch; cap its threads to the CPU share

        from xqg_ray.models.encoder import load_encoder

        torch.set_num_threads(threads)
        self.encoder = load_encoder(EncoderConfig.model_validate(encoder_config))
        if self.encoder.dim != expected_dim:
            raise ConfigError(
                f"encoder {self.encoder.name} makes {self.encoder.dim}-d vectors but the index "
                f"holds {expected_dim}-d vectors: serve the index with the encoder that built it"
            )
        self.encoder.encode_queries(["warm-up"])  # loads the single-query engine before traffic

    def encode_all(self, requests: list[list[str]]) -> list[np.ndarray]:
        """One encoder call for several requests' texts; one array per request."""
        texts = [text for request in requests for text in request]
        vectors = np.asarray(self.encoder.encode_queries(texts), dtype=np.float32)
        bounds = np.cumsum([len(request) for request in requests])[:-1]
        return np.split(vectors, bounds)

    def check(self) -> None:
        probe = self.encoder.encode_queries(["health check"])
        if probe.shape != (1, self.encoder.dim) or not np.isfinite(probe).all():
            raise RuntimeError(f"encoder {self.encoder.name} returned an invalid probe vector")


@serve.deployment(max_ongoing_requests=64, graceful_shutdown_timeout_s=SHUTDOWN_S)
class QueryEncoder:
    """The encoder as its own deployment (the default when it asks for a GPU), batched."""

    def __init__(
        self,
        encoder_config: dict,
        expected_dim: int,
        threads: int,
        max_batch_size: int,
        batch_wait_timeout_s: float,
    ):
        self.encoder = TextEncoder(encoder_config, expected_dim, threads)
        self.encode.set_max_batch_size(max_batch_size)
        self.encode.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=0.0)
    async def encode(self, requests: list[list[str]]) -> list[np.ndarray]:
        """Each request is a list of texts; one encoder call for the whole batch."""
        return await asyncio.to_thread(self.encoder.encode_all, requests)

    def check_health(self) -> None:
        self.encoder.check()
