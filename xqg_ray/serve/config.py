"""Typed configuration of the search service: one pydantic model for the CLI, YAML and KubeRay.

Importable without Ray. Secrets never live here: the optional bearer token is named by an
environment variable or a file path, and read inside the router replica.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from xqg_ray.config import EncoderConfig
from xqg_ray.strict import Strict


class Limits(Strict):
    """Request limits: anything beyond them is a 4xx, never work for the service."""

    max_k: int = Field(default=1000, ge=1, description="Largest k a request may ask for.")
    max_queries: int = Field(default=64, ge=1, description="Queries (or vectors) per request.")
    max_query_chars: int = Field(default=1000, ge=1, description="Characters per query text.")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="HTTP request body size.")


class Autoscaling(Strict):
    """Ray Serve autoscaling for the shard deployments (replaces `replicas_per_shard`)."""

    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas per shard group.")
    max_replicas: int = Field(default=2, ge=1, description="Most replicas per shard group.")
    target_ongoing_requests: float = Field(
        default=2.0, gt=0, description="Requests per replica Serve scales to keep."
    )


class ServeConfig(Strict):
    """Everything `build_app` needs; defaults fit a laptop (small CPU shares, loopback only)."""

    index: str = Field(description="Index URL (holds manifest.json) or a run root with one index.")
    encoder: EncoderConfig | None = Field(
        default=None,
        description="Query encoder; default: the encoder recorded in the index manifest, if any "
        "(without one, only /search_vectors answers).",
    )
    corpus: str = Field(
        default="",
        description="Passages table (pid, title, text) for include_text; default: "
        "<run root>/corpus/passages when `index` is a run root.",
    )
    shards_per_replica: int | None = Field(
        default=None,
        ge=1,
        description="Shards one shard replica holds and searches (in parallel threads when "
        "they hold enough work); default: as many as fit `replica_memory_mb` (from the "
        "manifest's shard sizes), so an index that fits one replica is one deployment. "
        "1 = a deployment per shard. Setting it turns the default `search_in_router` off.",
    )
    replica_memory_mb: float = Field(
        default=4096,
        gt=0,
        description="Memory budget of one shard replica; sets the default `shards_per_replica`.",
    )
    request_memory: bool = Field(
        default=True,
        description="Shard replicas ask Ray for memory equal to their shards' bytes, so "
        "placement never packs more shards on a node than its memory holds.",
    )
    search_in_router: bool | None = Field(
        default=None,
        description="The router holds every shard itself: HTTP -> router, no shard deployments, "
        "one handle hop fewer. Default: yes when `shards_per_replica` is unset and the index "
        "fits `router_index_mb`; else shard-group deployments.",
    )
    router_index_mb: float = Field(
        default=512,
        ge=0,
        description="Largest index (shard bytes) the router holds itself by default.",
    )
    replicas_per_shard: int = Field(
        default=1, ge=1, description="Replicas of each shard deployment (one per shard group)."
    )
    shard_num_cpus: float | None = Field(
        default=None,
        gt=0,
        description="CPUs reserved per shard replica; default: 0.25, scaled down so all shard "
        "replicas together reserve at most `shard_cpu_budget`.",
    )
    shard_cpu_budget: float = Field(
        default=1.0,
        gt=0,
        description="CPUs all shard replicas reserve together when `shard_num_cpus` is unset.",
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Serve autoscaling for the shard deployments instead of fixed replicas.",
    )
    encode_in_router: bool | None = Field(
        default=None,
        description="Encode queries inside the router (no encoder deployment, one hop fewer); "
        "default: yes for a CPU encoder, a separate encoder deployment when it asks for a GPU.",
    )
    encoder_replicas: int = Field(
        default=1, ge=1, description="Replicas of the encoder deployment (when it has one)."
    )
    encoder_num_cpus: float = Field(
        default=1.0, gt=0, description="CPUs each encoder replica reserves."
    )
    encoder_num_gpus: float | None = Field(
        default=None,
        ge=0,
        description="GPUs per encoder replica; default: 1 when the encoder's device is cuda "
        "(or auto on a cluster with GPUs), else 0.",
    )
    router_replicas: int = Field(
        default=1, ge=1, description="Router replicas (the HTTP ingress; they hold a small index)."
    )
    router_num_cpus: float = Field(
        default=0.25, gt=0, description="CPUs each router replica reserves."
    )
    check_resources: bool | None = Field(
        default=None,
        description="Refuse, before deploying, a service the Ray cluster cannot place (naming "
        "the setting). Default: checked by `xqg-ray serve`/`run_server`, not by a Serve config "
        "(an autoscaling cluster adds nodes on demand); true: both; false: never.",
    )
    startup_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="`xqg-ray serve`: give up (and say which deployment is not up) after this.",
    )
    max_batch_size: int = Field(
        default=16, ge=1, description="Requests batched together by the encoder and each shard."
    )
    batch_wait_timeout_s: float = Field(
        default=0.0,
        ge=0,
        description="How long a batch waits to fill before it runs (0: batches form from the "
        "requests that queue while the previous batch runs, no added latency).",
    )
    max_queued_requests: int = Field(
        default=16,
        ge=-1,
        description="Load shedding: search requests one router replica holds at once (being "
        "answered or waiting for a batch). More are answered at once with HTTP 503 and a "
        "`Retry-After` header instead of waiting (Serve's `max_queued_requests` bounds the "
        "HTTP proxy's own queue for the router too, 1,000 higher, as a backstop). Raise it to "
        "shed less at the cost of longer waits under load (a request waits about this many "
        "divided by the QPS the service answers); -1: no limit (requests queue without bound, "
        "as before).",
    )
    retry_after_s: int = Field(
        default=1,
        ge=0,
        description="Seconds a shed request's 503 tells the client to wait (`Retry-After`).",
    )
    shard_timeout_s: float = Field(
        default=10.0, gt=0, description="A shard that has not answered by then counts as missing."
    )
    shard_retries: int = Field(
        default=2, ge=0, description="Retries of a failed shard call (reaches another replica)."
    )
    on_missing_shard: Literal["partial", "error"] = Field(
        default="partial",
        description="partial: answer with `partial: true` and `missing_shards`; error: HTTP 503.",
    )
    local_dir: str = Field(
        default="",
        description="Node-local shard cache shared by the replicas of a node (remote shards are "
        "copied there once, every file checksummed once); default: <tmp>/xqg-ray-shard-cache.",
    )
    mmap: bool = Field(
        default=True, description="Memory-map Flat shards (replicas on a node share the pages)."
    )
    host: str = Field(default="127.0.0.1", description="HTTP bind address (loopback by default).")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port.")
    route_prefix: str = Field(default="/", description="Path prefix of the routes.")
    app_name: str = Field(default="xqg-search", description="Serve application name.")
    auth_token_env: str = Field(
        default="", description="Name of an environment variable holding a bearer token."
    )
    auth_token_file: str = Field(default="", description="Path of a file holding a bearer token.")
    limits: Limits = Field(default_factory=Limits)

    @field_validator("max_queued_requests")
    @classmethod
    def _shedding_limit(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 would refuse every search: use -1 (no limit) or at least 1")
        return value
