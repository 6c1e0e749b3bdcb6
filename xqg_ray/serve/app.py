"""Assemble and run the search application.

`build_app(ServeConfig)` returns the Serve application: a router (which holds a small index itself
and encodes queries itself for a CPU encoder), one deployment per shard group for a bigger index
(see `xqg_ray.serve.layout`), and a query-encoder deployment when the encoder asks for a GPU.
`app_builder` is the same for a Serve config file or a KubeRay RayService::

    applications:
      - name: xqg-search
        route_prefix: /
        import_path: xqg_ray.serve.app:app_builder
        args: {index: s3://bucket/run, replicas_per_shard: 2}

`xqg_ray.serve.local.run_server` deploys it for `xqg-ray serve`, checks and tests.
"""

from __future__ import annotations

import ray
from ray.serve import Application
from ray.serve.config import BackpressureConfig

from xqg_ray import storage
from xqg_ray.config import EncoderConfig
from xqg_ray.errors import ConfigError
from xqg_ray.index.shards import find_index, load_manifest
from xqg_ray.paths import RunPaths
from xqg_ray.serve.config import ServeConfig
from xqg_ray.serve.deployments import QueryEncoder, ShardGroupDeployment, threads_for
from xqg_ray.serve.layout import Layout, check_fits, group_name, plan_layout
from xqg_ray.serve.router import SearchRouter
from xqg_ray.strict import validate


def encoder_from_manifest(manifest: dict) -> EncoderConfig | None:
    """The encoder the index was built with, as recorded by the index stage (if it was)."""
    recorded = manifest.get("meta", {}).get("encoder")
    if not recorded:
        return None
    return validate(EncoderConfig, recorded, "index manifest: recorded encoder")


def resolve_corpus(cfg: ServeConfig, index_url: str) -> str:
    """The passages table for include_text: configured, or the run root's corpus, or none."""
    if cfg.corpus:
        if not storage.exists(cfg.corpus):
            raise ConfigError(f"corpus: {cfg.corpus} does not exist")
        return cfg.corpus
    if index_url != cfg.index:  # the index was found under a run root
        candidate = RunPaths(cfg.index).corpus("passages")
        if storage.exists(candidate):
            return candidate
    return ""


def _cluster_resources() -> tuple[dict[str, float], list[dict[str, float]]]:
    """Ray's total resources and each alive node's; empty when Ray is not connected."""
    if not ray.is_initialized():
        return {}, []
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    return ray.cluster_resources(), nodes


def plan(cfg: ServeConfig, manifest: dict | None = None, check: bool = True) -> Layout:
    """The layout `build_app` deploys for `cfg`; with `check`, refused (naming the setting) when
    the connected Ray cluster cannot place it."""
    manifest = manifest or load_manifest(find_index(cfg.index))
    encoder_cfg = cfg.encoder or encoder_from_manifest(manifest)
    cluster, nodes = _cluster_resources()
    layout = plan_layout(cfg, manifest, encoder_cfg, cluster.get("GPU", 0.0))
    if cluster and check:
        check_fits(layout, cluster, nodes)
    return layout


# Requests a router replica takes beyond those it holds, only to answer them 503 itself
SHED_HEADROOM = 1000


def router_queueing(cfg: ServeConfig) -> dict:
    """Serve's queueing options of the router deployment. With load shedding on, a router
    replica holds `max_queued_requests` search requests and answers the excess 503 itself
    (`Retry-After`, the API's JSON error naming the setting). Serve lets it take
    `SHED_HEADROOM` more than it holds, so under a burst the excess reaches it to be answered
    at once rather than waiting in the HTTP proxy (measured: a router-sized limit there left
    requests waiting up to 8 s in the proxy). The proxy's own queue for the router is bounded
    as well, at the same `max_queued_requests + SHED_HEADROOM` (Serve's `max_queued_requests`;
    its 503 carries `Retry-After` but a plain-text body): a backstop, not the limit, as Serve
    counts a request queued until a replica is picked for it, and a burst briefly has many
    such (measured: a router-sized bound there shed half of a burst in plain text while the
    router had room).
    Unbounded (-1): the old queueing, max(128, 4 x max_batch_size) per replica and no limit."""
    if cfg.max_queued_requests < 0:
        return {"max_ongoing_requests": max(128, 4 * cfg.max_batch_size)}
    return {
        "max_ongoing_requests": cfg.max_queued_requests + SHED_HEADROOM,
        "max_queued_requests": cfg.max_queued_requests + SHED_HEADROOM,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=cfg.retry_after_s),
    }


def build_app(cfg: ServeConfig) -> Application:
    """The search application for `cfg`; the index is located and checked before any replica.
    What it reserves is checked against the connected Ray cluster when `check_resources` is
    true (`local.run_server` checks unless it is false; a Serve config on an autoscaling cluster,
    which adds nodes on demand, is not checked by default)."""
    index_url = find_index(cfg.index)
    manifest = load_manifest(index_url)
    layout = plan(cfg, manifest, check=cfg.check_resources is True)
    reserve = {r.deployment: r for r in layout.reservations}
    batching = {
        "max_batch_size": cfg.max_batch_size,
        "batch_wait_timeout_s": cfg.batch_wait_timeout_s,
    }
    ongoing = max(64, 2 * cfg.max_batch_size)  # a full batch must fit in the replica's queue
    scaling = (
        {"autoscaling_config": cfg.autoscaling.model_dump()}
        if cfg.autoscaling
        else {"num_replicas": cfg.replicas_per_shard}
    )
    groups = [
        ShardGroupDeployment.options(
            name=group_name(shards),
            ray_actor_options=reserve[group_name(shards)].actor_options(),
            max_ongoing_requests=ongoing,
            **scaling,
        ).bind(index_url, manifest, shards, cfg.local_dir or None, cfg.mmap, **batching)
        for shards in layout.groups
    ]
    encoder_cfg = cfg.encoder or encoder_from_manifest(manifest)
    encoder = None
    if encoder_cfg is not None and not layout.encode_in_router:
        options = reserve["query-encoder"]
        encoder = QueryEncoder.options(
            name="query-encoder",
            num_replicas=cfg.encoder_replicas,
            ray_actor_options=options.actor_options(),
            max_ongoing_requests=ongoing,
        ).bind(
            encoder_cfg.model_dump(),
            int(manifest["dimension"]),
            threads_for(cfg.encoder_num_cpus),
            **batching,
        )
    in_router = encoder_cfg.model_dump() if encoder_cfg is not None and encoder is None else None
    return SearchRouter.options(
        name="router",
        num_replicas=cfg.router_replicas,
        ray_actor_options=reserve["router"].actor_options(),
        **router_queueing(cfg),
    ).bind(
        cfg.model_dump(),
        index_url,
        manifest,
        resolve_corpus(cfg, index_url),
        layout.describe(),
        groups,
        encoder,
        in_router,
    )


def app_builder(args: dict) -> Application:
    """Entry point for `serve run` / RayService: `args` are ServeConfig fields."""
    return build_app(validate(ServeConfig, args, "serve config"))
