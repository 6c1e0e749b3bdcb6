"""Index stage: a strategy's entries (id, pid, vector) become FAISS shards with a manifest.

Besides the index of the whole collection, a cross-lingual setting may need an index of only some
passage languages (X->X searches Arabic queries in Arabic passages). Those are built from the same
stored entries, filtered by the passages' language: nothing is re-encoded or re-generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

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


def languages_label(languages: Sequence[str]) -> str:
    """`de+en`: how a passage-language subset is named in paths and reports."""
    return "+".join(sorted(languages))


def index_url(cfg: RunConfig, strategy: str, languages: Sequence[str] | None = None) -> str:
    """The whole collection's index (`languages` None), or `<strategy>@<l1+l2>` for a subset."""
    name = strategy if languages is None else f"{strategy}@{languages_label(languages)}"
    return RunPaths(cfg.root).index(cfg.encoder.name, name)


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


def index_meta(
    cfg: RunConfig, strategy: str, languages: Sequence[str] | None = None
) -> dict[str, Any]:
    """The manifest `meta` an up-to-date index carries (a subset also records its languages)."""
    meta = {**strategy_params(cfg, strategy), "index": cfg.index.model_dump()}
    if languages is not None:
        meta["passage_languages"] = sorted(languages)
    return meta


def current_manifest(url: str, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest at `url` when it exists and was built with `meta`, else None."""
    if not exists(join(url, "manifest.json")):
        return None
    manifest = load_manifest(url)
    return manifest if manifest.get("meta") == meta else None


def build_index(
    cfg: RunConfig,
    strategy: str,
    languages: Sequence[str] | None = None,
    entries: pa.Table | None = None,
) -> dict[str, Any]:
    """Build the strategy's index (of the passages in `languages` only, when given), or reuse
    one built from the same parameters. `entries` saves re-reading them for several subsets."""
    out = index_url(cfg, strategy, languages)
    meta = index_meta(cfg, strategy, languages)
    manifest = current_manifest(out, meta)
    if manifest is not None:
        return manifest
    if entries is None:
        entries = PartitionedTable(entries_url(cfg, strategy)).read()
    if languages is not None:
        entries = entries_in_languages(cfg, entries, languages)
    if entries.num_rows == 0:
        where = "" if languages is None else f" in languages {sorted(languages)}"
        raise InputError(f"{entries_url(cfg, strategy)}: no index entries{where}")
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


def entries_in_languages(cfg: RunConfig, entries: pa.Table, languages: Sequence[str]) -> pa.Table:
    """The entries whose passage is in one of `languages` (the collection knows each pid's)."""
    passages = PartitionedTable(RunPaths(cfg.root).collection).read(columns=["pid", "lang"])
    wanted = pc.is_in(passages["lang"], value_set=pa.array(list(languages), pa.string()))
    pids = passages.filter(wanted)["pid"].combine_chunks()
    return entries.filter(pc.is_in(entries["pid"], value_set=pids))
