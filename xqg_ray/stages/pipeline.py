"""The build in order (docs/architecture.md); every step skips what is already complete.

ingest -> plan -> generate -> encode -> augment -> index (evaluation: `evaluate/driver.py`)
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from xqg_ray.config import RunConfig, StageResources
from xqg_ray.datasets.splits import DEV, TEST, with_role
from xqg_ray.paths import RunPaths, generated_vectors
from xqg_ray.stages import plan
from xqg_ray.stages.augment import AugmentTask, sums_meta, sums_name
from xqg_ray.stages.encode import EncodeTask
from xqg_ray.stages.generate import GenerateTask
from xqg_ray.stages.index import build_index, strategy_params
from xqg_ray.stages.ingest import ingest
from xqg_ray.stages.roles import run_roles, split_meta, uses_standin
from xqg_ray.stages.runner import run_stage
from xqg_ray.storage import (
    PartitionedTable,
    read_table,
    write_json_atomic,
)

log = logging.getLogger(__name__)
GENERATION_STRATEGIES = ("xqg", "expand", "multivector")


def needs_generation(cfg: RunConfig) -> bool:
    return any(s in GENERATION_STRATEGIES for s in cfg.augment.strategies)


def evaluation_queries(cfg: RunConfig):
    """The queries to evaluate: chosen languages, minus any the stand-in generator folds in."""
    queries = read_table(RunPaths(cfg.root).corpus("queries"))
    queries = plan.filter_languages(queries, cfg.collection.query_languages, "queries")
    if uses_standin(cfg):
        queries = with_role(queries, run_roles(cfg), (DEV, TEST))
    return queries


def make_plan(cfg: RunConfig) -> tuple[list[str], list[str]]:
    """Collection and query-set parts (written once; the unit of work of every later stage).

    The passages are streamed from the corpus part by part (`plan.stream_plan`): the driver never
    holds the corpus. The evaluation queries are small and planned whole."""
    paths = RunPaths(cfg.root)
    passage_parts = plan.stream_plan(
        PartitionedTable(paths.corpus("passages")),
        paths.collection,
        cfg.collection.passages_per_part,
        {"languages": cfg.collection.passage_languages},
        cfg.collection.passage_languages,
        ["pid", "lang", "title", "text"],
        "passages",
    )
    queries = evaluation_queries(cfg)
    query_meta = {
        "languages": cfg.collection.query_languages,
        "held_out": split_meta(cfg),
    }
    query_parts = plan.write_plan(
        plan.with_ids(queries.select(["qid", "lang", "text"])),
        paths.queryset,
        cfg.collection.queries_per_part,
        query_meta,
    )
    return passage_parts, query_parts


def _stage(
    cfg: RunConfig,
    name: str,
    task,
    parts: list[str],
    target_url: str,
    resources: StageResources,
    meta: dict[str, Any],
) -> dict[str, Any]:
    return run_stage(
        name,
        functools.partial(task[0], cfg, *task[1:]),
        parts,
        PartitionedTable(target_url),
        resources,
        cfg.ray,
        meta,
        RunPaths(cfg.root).stats(name),
    )


def build(cfg: RunConfig) -> dict[str, Any]:
    """Everything up to the indices: ingest, plan, generate, encode, augment, index."""
    paths = RunPaths(cfg.root)
    enc = cfg.encoder.name
    start = time.perf_counter()
    report: dict[str, Any] = {"ingest": ingest(cfg)}
    planned = time.perf_counter()
    passage_parts, query_parts = make_plan(cfg)
    report["timings"] = {
        "ingest": planned - start,
        "plan": time.perf_counter() - planned,
    }
    encoder_meta = {"encoder": cfg.encoder.model_dump()}
    stats = report["stages"] = {}
    if needs_generation(cfg):
        stats["generate"] = _stage(
            cfg,
            "generate",
            (GenerateTask,),
            passage_parts,
            paths.generated(cfg.generator.name),
            cfg.stages.generate,
            {"generator": cfg.generator.model_dump()},
        )
    for texts, parts in (("passages", passage_parts), ("queries", query_parts)):
        stats[f"encode-{texts}"] = _stage(
            cfg,
            f"encode-{texts}",
            (EncodeTask, texts),
            parts,
            paths.embeddings(enc, texts),
            cfg.stages.encode,
            encoder_meta,
        )
    strategies = cfg.augment.strategies
    if "xqg" in strategies or "multivector" in strategies:
        stats.update(encode_generated(cfg, passage_parts))
    for strategy in strategies:
        if strategy in ("dense", "xqg"):
            continue
        task = (EncodeTask, "expand") if strategy == "expand" else (AugmentTask, strategy)
        resources = cfg.stages.encode if strategy == "expand" else StageResources()
        stats[f"augment-{strategy}"] = _stage(
            cfg,
            f"augment-{strategy}",
            task,
            passage_parts,
            paths.embeddings(enc, strategy),
            resources,
            strategy_params(cfg, strategy),
        )
    report["index"] = {}
    for strategy in cfg.augment.strategies:
        start = time.perf_counter()
        manifest = build_index(cfg, strategy)
        report["index"][strategy] = {
            "entries": manifest["n_total"],
            "shards": len(manifest["shards"]),
            "bytes": sum(s["bytes"] for s in manifest["shards"]),
            "seconds": time.perf_counter() - start,
        }
    write_json_atomic(paths.stats("index"), report["index"])
    return report


def encode_generated(cfg: RunConfig, passage_parts: list[str]) -> dict[str, Any]:
    """Encode the generated queries, fusing xqg in the encoder actor (`EncodeTask`): one stage
    writes the per-language sums, the xqg entries and, for multivector only, the per-query
    vectors. When only the mixing changed (the sums are complete), xqg is re-mixed from the
    sums by plain tasks, with no re-encoding."""
    paths = RunPaths(cfg.root)
    enc = cfg.encoder.name
    gen_meta = {"encoder": cfg.encoder.model_dump(), "generator": cfg.generator.model_dump()}
    sums = PartitionedTable(paths.embeddings(enc, sums_name(cfg)))
    xqg = PartitionedTable(paths.embeddings(enc, "xqg"))
    per_query = PartitionedTable(paths.embeddings(enc, generated_vectors(cfg.generator.name)))
    wants_xqg = "xqg" in cfg.augment.strategies
    also = []
    if "multivector" in cfg.augment.strategies:
        also.append((per_query, gen_meta))
    remix = (
        wants_xqg
        and sums.is_complete()
        and sums.manifest()["meta"] == sums_meta(cfg)
        and not xqg.is_complete()
        and all(table.is_complete() for table, _ in also)
    )
    if wants_xqg and not remix:
        also.insert(0, (xqg, strategy_params(cfg, "xqg")))
    stats = {
        "encode-generated": run_stage(
            "encode-generated",
            functools.partial(EncodeTask, cfg, "generated"),
            passage_parts,
            sums,
            cfg.stages.encode,
            cfg.ray,
            sums_meta(cfg),
            paths.stats("encode-generated"),
            also=also,
        )
    }
    done = stats["encode-generated"]
    if wants_xqg and not remix:
        # xqg was mixed inside the encoder actors: its share of their time, measured there
        fused = {"stage": "augment-xqg", "fused_into": "encode-generated"}
        if done.get("skipped"):
            fused["skipped"] = True
        else:
            seconds = done.get("mix_seconds", 0.0)
            fused.update(
                parts=done["parts"],
                parts_computed=done["parts_computed"],
                rows_in=done.get("mix_passages", 0),
                rows_out=done.get("mix_passages", 0),
                seconds=seconds,
                rows_per_second=done.get("mix_passages", 0) / seconds if seconds > 0 else None,
                task_seconds=seconds,
                nodes=done["nodes"],
                backend=done["backend"],
            )
            write_json_atomic(paths.stats("augment-xqg"), fused)
        stats["augment-xqg"] = fused
    if remix:
        stats["augment-xqg"] = _stage(
            cfg,
            "augment-xqg",
            (AugmentTask, "xqg"),
            passage_parts,
            xqg.url,
            StageResources(),
            strategy_params(cfg, "xqg"),
        )
    return stats
