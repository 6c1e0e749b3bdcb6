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
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
from ray import serve

from xqg_ray.config import EncoderConfig
from xqg_ray.errors import ConfigError
from xqg_ray.index.search import keeps_max, merge_topk, search_index
from xqg_ray.index.shard_cache import load_shard_cached

DEFAULT_MAX_BATCH = 16
SHUTDOWN_S = 2.0  # graceful shutdown of a replica: in-flight searches take milliseconds
# Bytes one query reads (see `scan_bytes`) below which a search runs inline in the event loop,
# and per shard above which shards are searched in parallel threads: a thread hand-off costs more
# than it saves on small scans. Measured on 2 CPUs, 20k x 128 Flat in 4 shards (10 MB), one
# query: sequential 0.5 ms, a thread per shard 1.2 ms, plus 0.25 ms for asyncio.to_thread.
INLINE_BYTES = 16 << 20
PARALLEL_BYTES = 64 << 20


def scan_bytes(index: faiss.Index) -> float:
    """Roughly the bytes one query reads: the probed inverted lists plus the coarse quantizer
    for IVF indexes, every code for the others (an overestimate for graph indexes)."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        probed = min(1.0, ivf.nprobe / max(1, ivf.nlist))
        return index.ntotal * probed * ivf.code_size + ivf.nlist * index.d * 4
    return float(index.ntotal) * index.d * 4


def threads_for(num_cpus: float) -> int:
    """Intra-op threads for a replica's CPU share (at least one)."""
    return max(1, int(num_cpus))


class ShardGroup:
    """Several shards of one index in this process, searched in parallel, merged exactly: what a
    `ShardGroupDeployment` replica (or a router holding a small index itself) searches."""

    def __init__(
        self, index_url: str, manifest: dict, shards: list[int], local_dir: str | None, mmap: bool
    ):
        faiss.omp_set_num_threads(1)  # parallel over shards, one thread each
        self.shards = list(shards)
        self.keep_max = keeps_max(manifest["metric"])
        self.expected = [int(manifest["shards"][s]["count"]) for s in self.shards]
        self.indexes = [
            load_shard_cached(index_url, manifest, s, local_dir, mmap) for s in self.shards
        ]
        costs = [scan_bytes(index) for index in self.indexes]
        self.largest, self.total = max(costs), sum(costs)
        self.pool = (
            ThreadPoolExecutor(len(self.indexes), thread_name_prefix="shard")
            if len(self.indexes) > 1
            else None
        )

    def is_small(self, n_queries: int) -> bool:
        """Whether searching `n_queries` is cheaper than handing the work to a thread."""
        return n_queries * self.total < INLINE_BYTES

    def search(self, vectors: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, global ids) of this group's top-`depth`, -1-padded; shards in parallel
        threads (FAISS releases the GIL) when each holds enough work to pay for the hand-off."""
        if len(self.indexes) == 1:
            return search_index(self.indexes[0], vectors, depth)
        if self.pool is not None and len(vectors) * self.largest >= PARALLEL_BYTES:
            answers = list(
                self.pool.map(lambda index: search_index(index, vectors, depth), self.indexes)
            )
        else:
            answers = [search_index(index, vectors, depth) for index in self.indexes]
        return merge_topk(answers, depth, self.keep_max)

    def search_grouped(self, vectors: list[np.ndarray], depths: list[int]) -> list:
        """Requests of equal depth share one FAISS call; depth changes approximate indexes'
        results (HNSW searches max(efSearch, k)), so depths are never mixed."""
        answers: list = [None] * len(vectors)
        for depth in set(depths):
            members = [i for i, d in enumerate(depths) if d == depth]
            scores, ids = self.search(np.concatenate([vectors[i] for i in members]), depth)
            bounds = np.cumsum([len(vectors[i]) for i in members])[:-1]
            for i, part_scores, part_ids in zip(
                members, np.split(scores, bounds), np.split(ids, bounds), strict=True
            ):
                answers[i] = (part_scores, part_ids)
        return answers

    def check(self) -> None:
        for shard, index, expected in zip(self.shards, self.indexes, self.expected, strict=True):
            if index.ntotal != expected:
                raise RuntimeError(
                    f"shard {shard} holds {index.ntotal} vectors, expected {expected}"
                )


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
