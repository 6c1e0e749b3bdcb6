"""Assemble and run the search application.

`build_app(ServeConfig)` returns the Serve application (router + one deployment per shard + the
query encoder). `app_builder` is the same for a Serve config file or a KubeRay RayService::

    applications:
      - name: xqg-search
        route_prefix: /
        import_path: xqg_ray.serve.app:app_builder
        args: {index: s3://bucket/run, replicas_per_shard: 2}

`run_server` starts it on a local (or `RAY_ADDRESS`) Ray cluster for `xqg-ray serve`.
"""

from __future__ import annotations

import socket
import time

import ray
from pydantic import ValidationError
from ray import serve
from ray.serve import Application

from xqg_ray import storage
from xqg_ray.config import EncoderConfig
from xqg_ray.errors import ConfigError
from xqg_ray.index.shards import find_index, load_manifest
from xqg_ray.paths import RunPaths
from xqg_ray.serve.config import ServeConfig
from xqg_ray.serve.deployments import QueryEncoder, ShardSearcher, threads_for
from xqg_ray.serve.router import SearchRouter


def encoder_from_manifest(manifest: dict) -> EncoderConfig | None:
    """The encoder the index was built with, as recorded by the index stage (if it was)."""
    recorded = manifest.get("meta", {}).get("encoder")
    if not recorded:
        return None
    try:
        return EncoderConfig.model_validate(recorded)
    except ValidationError as exc:
        raise ConfigError(f"index manifest: recorded encoder is not a valid config: {exc}") from exc


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


def build_app(cfg: ServeConfig) -> Application:
    """The search application for `cfg`; the index is located and checked before any replica."""
    index_url = find_index(cfg.index)
    manifest = load_manifest(index_url)
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
    shards = [
        ShardSearcher.options(
            name=f"shard-{number:05d}",
            ray_actor_options={"num_cpus": cfg.shard_num_cpus},
            max_ongoing_requests=ongoing,
            **scaling,
        ).bind(
            index_url,
            number,
            cfg.local_dir or None,
            cfg.mmap,
            threads_for(cfg.shard_num_cpus),
            **batching,
        )
        for number in range(len(manifest["shards"]))
    ]
    encoder_cfg = cfg.encoder or encoder_from_manifest(manifest)
    encoder = None
    if encoder_cfg is not None:
        encoder = QueryEncoder.options(
            name="query-encoder",
            num_replicas=cfg.encoder_replicas,
            ray_actor_options={"num_cpus": cfg.encoder_num_cpus},
            max_ongoing_requests=ongoing,
        ).bind(
            encoder_cfg.model_dump(),
            int(manifest["dimension"]),
            threads_for(cfg.encoder_num_cpus),
            **batching,
        )
    return SearchRouter.options(
        name="router",
        num_replicas=cfg.router_replicas,
        ray_actor_options={"num_cpus": cfg.router_num_cpus},
    ).bind(cfg.model_dump(), index_url, resolve_corpus(cfg, index_url), shards, encoder)


def app_builder(args: dict) -> Application:
    """Entry point for `serve run` / RayService: `args` are ServeConfig fields."""
    try:
        cfg = ServeConfig.model_validate(args)
    except ValidationError as exc:
        raise ConfigError(f"serve config: {exc}") from exc
    return build_app(cfg)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` right now, for a service started by a test, benchmark or check."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def service_url(cfg: ServeConfig) -> str:
    """The base URL a local client uses (a wildcard bind address is reached via loopback)."""
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def run_server(cfg: ServeConfig, blocking: bool = True) -> str:
    """Deploy the application and return its URL; `blocking` waits until Ctrl-C, then stops it.

    Uses the Ray cluster at `RAY_ADDRESS` if set, else starts a local one. HTTP binds to
    `cfg.host` (127.0.0.1 unless configured otherwise).
    """
    app = build_app(cfg)
    if not ray.is_initialized():
        ray.init()
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(app, name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=False)
    url = service_url(cfg)
    if blocking:
        print(f"xqg-ray search service at {url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            serve.delete(cfg.app_name)
    return url
