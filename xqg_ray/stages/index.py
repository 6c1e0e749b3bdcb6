"""Index stage: a strategy's entries (id, pid, vector) become FAISS shards with a manifest.

Besides the index of the whole collection, a cross-lingual setting may need an index of only some
passage languages (X->X searches Arabic queries in Arabic passages). Those are built from the same
stored entries, filtered by the passages' language: nothing is re-encoded or re-generated.

The build is parallel and never holds the entries in the driver: shards follow the entries'
parts (shard s holds a contiguous run of parts), a trainable factory (IVF, PQ) is trained once by
a task on a sample and saved (`trained.faiss`), then one Ray task per shard streams its parts into
a copy of it and writes the shard, its pid map and their checksums. The driver writes only the
manifest. A shard whose files and record are already there (same plan) is not rebuilt, so a
killed build resumes shard by shard, and one shard can be rebuilt alone by deleting its record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.config import RunConfig
from xqg_ray.errors import InputError
from xqg_ray.index import shards as faiss_shards
from xqg_ray.index.shards import IndexManifest, load_manifest
from xqg_ray.paths import RunPaths
from xqg_ray.schema import arrow_to_vectors
from xqg_ray.stages.augment import multivector_stride
from xqg_ray.stages.runner import tasks_in_order
from xqg_ray.storage import PartitionedTable, exists, join, read_json, write_json_atomic


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
    cfg: RunConfig, strategy: str, languages: Sequence[str] | None = None
) -> dict[str, Any]:
    """Build the strategy's index (of the passages in `languages` only, when given) in parallel
    from the entries' parts, or reuse one built from the same parameters."""
    out = index_url(cfg, strategy, languages)
    meta = index_meta(cfg, strategy, languages)
    manifest = current_manifest(out, meta)
    if manifest is not None:
        return manifest
    return build_from_parts(cfg, strategy, languages, out, meta)


@dataclass(frozen=True)
class ShardPlan:
    """What one shard task needs: plain values, so it travels to a Ray task as is."""

    entries: str  # the entries table URL
    collection: str  # the collection table URL (passage languages, for subsets)
    out: str  # the index URL
    parts: tuple[str, ...]
    languages: tuple[str, ...] | None
    stride: int | None  # multivector: entry id // stride is the passage id
    dim: int
    factory: str
    metric: str
    trained: dict | None  # the trained index's record, None for factories without training
    checksums: tuple[str, ...] = ()  # the entries parts' sha256, as their manifest records

    def key(self, number: int) -> str:
        """A digest of everything the shard's content depends on (not where it lives), kept in
        its record: the same parts with the same checksums, languages, factory and quantizer."""
        fields = {k: v for k, v in asdict(self).items() if k not in PLACES}
        text = json.dumps({"number": number, **fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


PLACES = ("entries", "collection", "out")


def part_entries(plan: ShardPlan, part: str) -> pa.Table:
    """One part's entries (id, pid, vector), restricted to the plan's passage languages."""
    table = PartitionedTable(plan.entries).read_part(part, columns=["id", "pid", "vector"])
    if plan.languages is None:
        return table
    passages = PartitionedTable(plan.collection).read_part(part, columns=["id", "lang"])
    wanted = pc.is_in(passages["lang"], value_set=pa.array(list(plan.languages), pa.string()))
    passage_ids = passages.filter(wanted)["id"].combine_chunks()
    ids = table["id"] if plan.stride is None else pc.divide(table["id"], plan.stride)
    return table.filter(pc.is_in(ids, value_set=passage_ids))


def shard_batches(plan: ShardPlan) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, Any]]:
    for part in plan.parts:
        table = part_entries(plan, part)
        if table.num_rows == 0:
            continue
        ids = table["id"].to_numpy()
        passage_ids = ids if plan.stride is None else ids // plan.stride
        yield arrow_to_vectors(table["vector"]), ids, passage_ids, table["pid"].combine_chunks()


def shard_record_url(out: str, number: int) -> str:
    return join(out, f"shard-{number:05d}.json")


def build_shard(plan: ShardPlan, number: int) -> dict[str, Any]:
    """One shard task: stream the plan's parts into a copy of the trained index, write the
    shard and its pid map, then the shard's record (its checksums and the plan's key)."""
    import faiss

    faiss.omp_set_num_threads(1)
    base = faiss_shards.base_index(plan.out, plan.dim, plan.factory, plan.metric, plan.trained)
    record = faiss_shards.write_shard(plan.out, number, base, shard_batches(plan))
    record["parts"] = list(plan.parts)
    record["key"] = plan.key(number)
    write_json_atomic(shard_record_url(plan.out, number), record)
    return record


def sample_entries(
    plan: ShardPlan, parts: list[str], rows: list[int], wanted: int | None
) -> np.ndarray:
    """`index.train_sample` vectors (all when unset), drawn from as few evenly spaced parts as
    hold that many rows; rows within them uniformly at random (seeded)."""
    chosen = parts
    if wanted is not None:
        per_part = max(1, sum(rows) // max(1, len(parts)))
        needed = min(len(parts), -(-wanted // per_part))
        picks = np.unique(np.linspace(0, len(parts) - 1, needed).round().astype(int))
        chosen = [parts[i] for i in picks]
    vectors = [arrow_to_vectors(part_entries(plan, part)["vector"]) for part in chosen]
    sample = np.concatenate(vectors) if vectors else np.zeros((0, plan.dim), np.float32)
    if wanted is not None and wanted < len(sample):
        keep = np.random.default_rng(0).choice(len(sample), size=wanted, replace=False)
        sample = sample[np.sort(keep)]
    return sample


def train_task(plan: ShardPlan, parts: list[str], rows: list[int], wanted: int | None) -> dict:
    """A task: train the plan's factory on a sample of the entries and save it."""
    import faiss

    faiss.omp_set_num_threads(1)  # one task, one CPU: more threads only contend
    sample = sample_entries(plan, parts, rows, wanted)
    if len(sample) == 0:
        raise InputError(f"{plan.entries}: no entries to train the index on")
    return faiss_shards.train_index(sample, plan.out, plan.factory, plan.metric)


def _run_tasks(cfg: RunConfig, calls: list[tuple], num_gpus: float = 0) -> list[Any]:
    """Run `fn(*args)` for each call: as Ray tasks when Ray is enabled, else here in turn."""
    if not calls:
        return []
    return list(tasks_in_order(cfg.ray, calls, num_cpus=1, num_gpus=num_gpus))


def build_from_parts(
    cfg: RunConfig,
    strategy: str,
    languages: Sequence[str] | None,
    out: str,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """The parallel build: train once (a task), one task per shard, the manifest here."""
    source = PartitionedTable(entries_url(cfg, strategy))
    manifest = source.manifest()
    if not manifest or not manifest.get("complete"):
        raise InputError(f"{source.url}: index entries are missing or incomplete")
    parts = sorted(manifest["parts"])
    rows = [int(manifest["parts"][p]["rows"]) for p in parts]
    if sum(rows) == 0:
        raise InputError(f"{source.url}: no index entries")
    dim = _dimension(manifest, source, parts)
    stride = multivector_stride(cfg) if strategy == "multivector" else None
    plan = ShardPlan(
        entries=source.url,
        collection=RunPaths(cfg.root).collection,
        out=out,
        parts=(),
        languages=tuple(sorted(languages)) if languages is not None else None,
        stride=stride,
        dim=dim,
        factory=cfg.index.factory,
        metric="ip",
        trained=None,
    )
    trained = None
    if faiss_shards.needs_training(dim, cfg.index.factory):
        checksums = [manifest["parts"][p]["sha256"] for p in parts]
        trained = _reuse_trained(plan, cfg, checksums)
        if trained is None:
            trained = _run_tasks(
                cfg,
                [(train_task, plan, parts, rows, cfg.index.train_sample)],
                num_gpus=_training_gpus(cfg),
            )[0]
            key = _train_key(plan, cfg, checksums)
            write_json_atomic(join(out, "trained.json"), {"key": key, **trained})
    plan = ShardPlan(**{**asdict(plan), "trained": trained})
    n_shards = min(cfg.index.shards, len(parts))
    groups = [tuple(str(p) for p in g) for g in np.array_split(np.array(parts), n_shards)]
    plans = [
        ShardPlan(
            **{
                **asdict(plan),
                "parts": group,
                "checksums": tuple(manifest["parts"][p]["sha256"] for p in group),
            }
        )
        for group in groups
    ]
    records: dict[int, dict] = {}
    calls = []
    for number, shard_plan in enumerate(plans):
        done = _reuse_shard(shard_plan, number)
        if done is not None:
            records[number] = done
        else:
            calls.append((build_shard, shard_plan, number))
    for (_, _, number), record in zip(calls, _run_tasks(cfg, calls), strict=True):
        records[number] = record
    shards = [records[n] for n in range(len(plans))]
    if sum(s["count"] for s in shards) == 0:
        where = "" if languages is None else f" in languages {sorted(languages)}"
        raise InputError(f"{source.url}: no index entries{where}")
    pid_map, entry_map = _run_tasks(cfg, [(_side_files, plan, shards, parts)])[0]
    manifest = IndexManifest(
        dimension=dim,
        factory=cfg.index.factory,
        shards=shards,
        trained=trained,
        entry_stride=stride,
        entry_map=entry_map,
        pid_map=pid_map,
        meta=meta,
    )
    return faiss_shards.write_manifest(out, manifest)


def _side_files(plan: ShardPlan, shards: list[dict], parts: list[str]) -> tuple[dict, dict | None]:
    """A task: the whole index's pid map (and, for small multivector indexes, the legacy entry
    map) for readers that load one file."""
    pid_map = faiss_shards.merge_pid_maps(plan.out, shards)
    entry_map = None
    total = sum(s["count"] for s in shards)
    if plan.stride is not None and total <= faiss_shards.LEGACY_ENTRY_MAP_MAX:
        ids = np.concatenate([part_entries(plan, p)["id"].to_numpy() for p in parts])
        entry_map = faiss_shards.write_entry_map(plan.out, ids, ids // plan.stride)
    return pid_map, entry_map


def _dimension(manifest: dict, source: PartitionedTable, parts: list[str]) -> int:
    schema = manifest.get("schema") or ""
    for line in schema.splitlines():
        if line.startswith("vector:") and "fixed_size_list" in line:
            return int(line.rsplit("[", 1)[-1].rstrip("]"))
    first = next(p for p in parts if int(manifest["parts"][p]["rows"]) > 0)
    return source.read_part(first, columns=["vector"]).schema.field("vector").type.list_size


def _train_key(plan: ShardPlan, cfg: RunConfig, checksums: list[str]) -> str:
    fields = {k: v for k, v in asdict(plan).items() if k not in PLACES}
    fields.update(train_sample=cfg.index.train_sample, checksums=checksums)
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _reuse_trained(plan: ShardPlan, cfg: RunConfig, checksums: list[str]) -> dict | None:
    url = join(plan.out, "trained.json")
    if not exists(url):
        return None
    record = read_json(url)
    if record.pop("key", None) != _train_key(plan, cfg, checksums):
        return None
    return record if exists(join(plan.out, record["file"])) else None


def _reuse_shard(plan: ShardPlan, number: int) -> dict | None:
    url = shard_record_url(plan.out, number)
    if not exists(url):
        return None
    record = read_json(url)
    return record if record.get("key") == plan.key(number) else None


def _training_gpus(cfg: RunConfig) -> float:
    if not cfg.ray.enabled:
        return 0
    import ray

    from xqg_ray.stages.runner import ensure_ray

    ensure_ray(cfg.ray)
    return 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
