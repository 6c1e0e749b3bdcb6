"""Typed configuration of the search service: one pydantic model for the CLI, YAML and KubeRay.

Importable without Ray. Secrets never live here: the optional bearer token is named by an
environment variable or a file path, and read inside the router replica.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from xqg_ray.config import EncoderConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Limits(_Strict):
    """Request limits: anything beyond them is a 4xx, never work for the service."""

    max_k: int = Field(default=1000, ge=1, description="Largest k a request may ask for.")
    max_queries: int = Field(default=64, ge=1, description="Queries (or vectors) per request.")
    max_query_chars: int = Field(default=1000, ge=1, description="Characters per query text.")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="HTTP request body size.")


class Autoscaling(_Strict):
    """Ray Serve autoscaling for the shard deployments (replaces `replicas_per_shard`)."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=2, ge=1)
    target_ongoing_requests: float = Field(default=2.0, gt=0)


class ServeConfig(_Strict):
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
    replicas_per_shard: int = Field(default=1, ge=1)
    shard_num_cpus: float = Field(default=0.25, gt=0)
    autoscaling: Autoscaling | None = None
    encoder_replicas: int = Field(default=1, ge=1)
    encoder_num_cpus: float = Field(default=1.0, gt=0)
    router_replicas: int = Field(default=1, ge=1)
    router_num_cpus: float = Field(default=0.25, gt=0)
    max_batch_size: int = Field(
        default=16, ge=1, description="Requests batched together by the encoder and each shard."
    )
    batch_wait_timeout_s: float = Field(
        default=0.002, ge=0, description="How long a batch waits to fill before it runs."
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
    local_dir: str = Field(default="", description="Where replicas copy remote shards.")
    mmap: bool = True
    host: str = Field(default="127.0.0.1", description="HTTP bind address (loopback by default).")
    port: int = Field(default=8000, ge=1, le=65535)
    route_prefix: str = "/"
    app_name: str = "xqg-search"
    auth_token_env: str = Field(
        default="", description="Name of an environment variable holding a bearer token."
    )
    auth_token_file: str = Field(default="", description="Path of a file holding a bearer token.")
    limits: Limits = Field(default_factory=Limits)
