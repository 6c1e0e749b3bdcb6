"""Index stage: a strategy's entries (id, pid, vector) become FAISS shards with a manifest."""

from __future__ import annotations

from typing import Any

from xqg_ray.config import RunConfig
from xqg_ray.errors import InputError
from xqg_ray.index.shards import build_shards, load_manifest
from xqg_ray.paths import RunPaths
from xqg_ray.schema import arrow_to_vectors
from xqg_ray.stages.augment import multivector_stride
from xqg_ray.storage import PartitionedTable, exists, join


def entries_url(cfg: RunConfig, strategy: str) -> str:
    """Where a strategy's index entries live: `dense` indexes the passage embeddings as they are."""
    paths = RunPaths(cfg.root)
    return paths.embeddings(cfg.encoder.name, "passages" if strategy == "dense" else strategy)


def strategy_params(cfg: RunConfig, strategy: str) -> dict[str, Any]:
    """What an index depends on besides its entries: recorded, and compared on rerun."""
    params: dict[str, Any] = {"strategy": strategy, "encoder": cfg.encoder.model_dump()}
    if strategy != "dense":
        params["generator"] = cfg.generator.model_dump()
        params["augment"] = {
            "languages": cfg.augment.languages,
            "queries_per_language": cfg.augment.queries_per_language,
        }
    if strategy == "xqg":
        params["augment"].update(alpha=cfg.augment.alpha, reduce=cfg.augment.reduce)
    if strategy == "expand":
        params["augment"]["expand_max_length"] = cfg.augment.expand_max_length
    if strategy == "multivector":
        params["multivector_stride"] = multivector_stride(cfg)
    return params


def build_index(cfg: RunConfig, strategy: str) -> dict[str, Any]:
    """Build the strategy's index, or reuse one built from the same parameters."""
    out = RunPaths(cfg.root).index(cfg.encoder.name, strategy)
    meta = {**strategy_params(cfg, strategy), "index": cfg.index.model_dump()}
    if exists(join(out, "manifest.json")):
        manifest = load_manifest(out)
        if manifest.get("meta") == meta:
            return manifest
    entries = PartitionedTable(entries_url(cfg, strategy)).read()
    if entries.num_rows == 0:
        raise InputError(f"{entries_url(cfg, strategy)}: no index entries")
    ids = entries["id"].to_numpy()
    entry_to_passage = None
    if strategy == "multivector":
        entry_to_passage = ids // multivector_stride(cfg)
    return build_shards(
        arrow_to_vectors(entries["vector"]),
        ids,
        out,
        n_shards=min(cfg.index.shards, entries.num_rows),
        factory=cfg.index.factory,
        train_sample=cfg.index.train_sample,
        meta=meta,
        entry_to_passage=entry_to_passage,
        pids=entries["pid"].to_pylist(),
    )
