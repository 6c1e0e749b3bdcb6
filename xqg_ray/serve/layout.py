"""Where the index lives in the service, and what the service reserves: decided before deploying.

A *shard group* is a run of contiguous shards held by one replica, which searches them (in
parallel threads when they hold enough work) and merges them exactly. A small index (up to
`router_index_mb`) is held by the router itself: HTTP -> router, no handle hop at all. A bigger one
gets shard-group deployments; `shards_per_replica` defaults to as many shards as fit one replica's
memory budget (from the manifest's shard sizes), so the router makes one handle call per request
until the index outgrows a replica; then a deployment per group (a handle call reaches one
replica, so scatter-gather needs a deployment per group).

`plan_layout` turns a config and a manifest into the deployments and their reservations;
`check_fits` compares those with what the Ray cluster has and refuses, naming the setting to
change, instead of letting Serve wait forever for replicas it cannot place. Importable without Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from xqg_ray.config import EncoderConfig
from xqg_ray.errors import ConfigError
from xqg_ray.serve.config import ServeConfig

DEFAULT_SHARD_CPUS = 0.25  # per shard replica, before scaling to `shard_cpu_budget`
MIN_SHARD_CPUS = 0.0001  # Ray's resource granularity
MEMORY_OVERHEAD = 1.1  # FAISS structures beyond the serialized bytes, plus the replica itself


@dataclass(frozen=True)
class Reservation:
    """One deployment: its replicas and what each replica asks Ray for."""

    deployment: str
    replicas: int
    num_cpus: float
    num_gpus: float = 0.0
    memory_bytes: int = 0
    cpu_setting: str = ""  # the config field that sets num_cpus (named in errors)

    def actor_options(self) -> dict:
        options: dict = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            options["num_gpus"] = self.num_gpus
        if self.memory_bytes:
            options["memory"] = self.memory_bytes
        return options


@dataclass
class Layout:
    groups: list[list[int]]  # shard numbers per group (empty when the router holds the shards)
    search_in_router: bool
    encode_in_router: bool
    has_encoder: bool
    reservations: list[Reservation] = field(default_factory=list)

    def group_of(self, shard: int) -> int:
        return next(number for number, group in enumerate(self.groups) if shard in group)

    def describe(self) -> dict:
        return {
            "groups": self.groups,
            "search_in_router": self.search_in_router,
            "encode_in_router": self.encode_in_router,
            "deployments": {
                r.deployment: {
                    "replicas": r.replicas,
                    "num_cpus": r.num_cpus,
                    "num_gpus": r.num_gpus,
                    "memory_bytes": r.memory_bytes,
                }
                for r in self.reservations
            },
        }


def group_name(shards: list[int]) -> str:
    """`shard-00003` for a deployment of one shard, `shards-00000-00003` for a group."""
    if len(shards) == 1:
        return f"shard-{shards[0]:05d}"
    return f"shards-{shards[0]:05d}-{shards[-1]:05d}"


def shards_that_fit(manifest: dict, budget_mb: float) -> int:
    """How many of the index's largest shards fit one replica's memory budget (at least one)."""
    largest = max(int(shard["bytes"]) for shard in manifest["shards"])
    fit = int(budget_mb * 2**20 // max(1, int(largest * MEMORY_OVERHEAD)))
    return max(1, min(len(manifest["shards"]), fit))


def shard_groups(manifest: dict, cfg: ServeConfig) -> list[list[int]]:
    n_shards = len(manifest["shards"])
    per_replica = cfg.shards_per_replica or shards_that_fit(manifest, cfg.replica_memory_mb)
    per_replica = min(per_replica, n_shards)
    return [
        list(range(start, min(start + per_replica, n_shards)))
        for start in range(0, n_shards, per_replica)
    ]


def wants_gpu(encoder: EncoderConfig, cluster_gpus: float) -> bool:
    device = encoder.device.lower()
    return device.startswith("cuda") or (device == "auto" and cluster_gpus > 0)


def plan_layout(
    cfg: ServeConfig, manifest: dict, encoder: EncoderConfig | None, cluster_gpus: float = 0.0
) -> Layout:
    """The deployments of the service for this index and what each replica reserves."""
    total_bytes = sum(int(shard["bytes"]) for shard in manifest["shards"])
    in_router = cfg.search_in_router
    if in_router is None:  # a small index: one hop fewer (measured: docs/serving.md)
        in_router = (
            cfg.shards_per_replica is None
            and total_bytes * MEMORY_OVERHEAD <= cfg.router_index_mb * 2**20
        )
    if in_router and total_bytes * MEMORY_OVERHEAD > cfg.replica_memory_mb * 2**20:
        raise ConfigError(
            f"search_in_router: the index holds {total_bytes / 2**20:.0f} MiB of shards, over "
            f"replica_memory_mb={cfg.replica_memory_mb:g}: raise replica_memory_mb or turn "
            "search_in_router off"
        )
    groups = [] if in_router else shard_groups(manifest, cfg)
    gpu_encoder = encoder is not None and wants_gpu(encoder, cluster_gpus)
    encode_in_router = encoder is not None and (
        cfg.encode_in_router if cfg.encode_in_router is not None else not gpu_encoder
    )
    reservations = []
    # the CPU share is sized for the most replicas a group may have; the check needs the first
    shard_replicas = cfg.autoscaling.max_replicas if cfg.autoscaling else cfg.replicas_per_shard
    first_replicas = max(1, cfg.autoscaling.min_replicas) if cfg.autoscaling else shard_replicas
    if groups:
        share = cfg.shard_num_cpus
        if share is None:
            share = min(DEFAULT_SHARD_CPUS, cfg.shard_cpu_budget / (len(groups) * shard_replicas))
            share = max(MIN_SHARD_CPUS, math.floor(share / MIN_SHARD_CPUS) * MIN_SHARD_CPUS)
        for group in groups:
            group_bytes = sum(int(manifest["shards"][s]["bytes"]) for s in group)
            memory = int(group_bytes * MEMORY_OVERHEAD) if cfg.request_memory else 0
            reservations.append(
                Reservation(group_name(group), first_replicas, share, 0.0, memory, "shard_num_cpus")
            )
    if encoder is not None and not encode_in_router:
        gpus = cfg.encoder_num_gpus if cfg.encoder_num_gpus is not None else float(gpu_encoder)
        reservations.append(
            Reservation(
                "query-encoder",
                cfg.encoder_replicas,
                cfg.encoder_num_cpus,
                gpus,
                0,
                "encoder_num_cpus",
            )
        )
    router_memory = 0
    if in_router and cfg.request_memory:
        router_memory = int(total_bytes * MEMORY_OVERHEAD)
    reservations.append(
        Reservation(
            "router",
            cfg.router_replicas,
            cfg.router_num_cpus,
            0.0,
            router_memory,
            "router_num_cpus",
        )
    )
    return Layout(groups, in_router, encode_in_router, encoder is not None, reservations)


def _resource_lines(layout: Layout, key: str) -> list[str]:
    lines = []
    for r in layout.reservations:
        amount = {"CPU": r.num_cpus, "GPU": r.num_gpus, "memory": r.memory_bytes}[key]
        if amount:
            shown = f"{amount / 2**30:.2f} GiB" if key == "memory" else f"{amount:g}"
            lines.append(f"{r.deployment}: {r.replicas} x {shown}")
    return lines


def check_fits(
    layout: Layout, cluster: dict[str, float], nodes: list[dict[str, float]] | None = None
) -> None:
    """Refuse a service the cluster cannot place, naming the setting that would make it fit.

    `cluster` is Ray's total resources, `nodes` each alive node's resources (an actor must fit on
    one node). Serve would otherwise keep the application DEPLOYING forever.
    """
    hints = {
        "CPU": "lower shard_num_cpus / shard_cpu_budget, router_num_cpus or encoder_num_cpus, "
        "fewer replicas (replicas_per_shard, router_replicas, encoder_replicas), or start Ray "
        "with more CPUs",
        "GPU": "set encoder_num_gpus: 0 (or encode_in_router: true), or add a GPU node",
        "memory": "raise shards_per_replica's budget on bigger nodes, set request_memory: false "
        "(shards are memory-mapped), or add memory",
    }
    for key in ("CPU", "GPU", "memory"):
        attr = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory_bytes"}[key]
        need = sum(r.replicas * getattr(r, attr) for r in layout.reservations)
        have = float(cluster.get(key, 0.0))
        if need > have + 1e-6:
            shown = (
                (f"{need / 2**30:.2f} GiB", f"{have / 2**30:.2f} GiB")
                if key == "memory"
                else (f"{need:g}", f"{have:g}")
            )
            raise ConfigError(
                f"the search service reserves {shown[0]} {key} "
                f"({'; '.join(_resource_lines(layout, key))}) but the Ray cluster has "
                f"{shown[1]}: {hints[key]}"
            )
        if nodes:
            largest = max(float(node.get(key, 0.0)) for node in nodes)
            for r in layout.reservations:
                if getattr(r, attr) > largest + 1e-6:
                    setting = r.cpu_setting if key == "CPU" else hints[key]
                    raise ConfigError(
                        f"a {r.deployment} replica asks for {getattr(r, attr):g} {key}, more than "
                        f"any one node has ({largest:g}): lower {setting}"
                    )
