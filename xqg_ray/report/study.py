"""After the build and the evaluation: tuning on dev, cost probes, query-time probes, the report.

Each step writes one JSON file under `results/<experiment>/` (docs/architecture.md, "The run root"),
so the report can be re-rendered from files alone, and any step can be rerun by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xqg_ray.bench.harness import machine_label
from xqg_ray.config import RunConfig
from xqg_ray.paths import RunPaths
from xqg_ray.schema import arrow_to_vectors
from xqg_ray.storage import PartitionedTable, join, write_json_atomic

Echo = Callable[[str], None]


def tune(cfg: RunConfig) -> dict[str, Any] | None:
    """The dev grid and the published / dev-chosen xqg on test (None without a dev split)."""
    from xqg_ray.evaluate import tuning

    if cfg.tuning.dev_fraction <= 0 or "xqg" not in cfg.augment.strategies:
        return None
    result = tuning.tune_xqg(cfg)
    tuning.write(cfg, result)
    return result


def frontier(cfg: RunConfig) -> dict[str, Any] | None:
    """The cost/effectiveness frontier and the generator-quality sensitivity (re-mixed from the
    stored per-query vectors; needs cost.json, a dev split and multivector's vectors)."""
    from xqg_ray.evaluate import frontier as grid
    from xqg_ray.evaluate import sensitivity
    from xqg_ray.storage import exists, read_json, write_bytes_atomic

    out = RunPaths(cfg.root).results(cfg.evaluate.experiment)
    wanted = {"xqg", "multivector"} <= set(cfg.augment.strategies)
    if cfg.tuning.dev_fraction <= 0 or not wanted or not exists(join(out, "cost.json")):
        return None
    result = grid.run_frontier(cfg, read_json(join(out, "cost.json")))
    write_json_atomic(join(out, "frontier.json"), result)
    write_bytes_atomic(join(out, "frontier.png"), grid.plot_png(result))
    degraded = sensitivity.run_sensitivity(cfg)
    write_json_atomic(join(out, "sensitivity.json"), degraded)
    write_bytes_atomic(join(out, "sensitivity.png"), sensitivity.plot_png(degraded))
    return {"frontier": result, "sensitivity": degraded, "folder": out}


def reported_queries(cfg: RunConfig):
    """The evaluation's test queries (texts and vectors), in the same order."""
    from xqg_ray.datasets.splits import TEST, with_role
    from xqg_ray.stages.roles import run_roles

    paths = RunPaths(cfg.root)
    texts = PartitionedTable(paths.queryset).read(columns=["qid", "text"])
    vectors = PartitionedTable(paths.embeddings(cfg.encoder.name, "queries")).read(
        columns=["qid", "vector"]
    )
    if cfg.tuning.dev_fraction > 0:
        roles = run_roles(cfg)
        texts, vectors = with_role(texts, roles, [TEST]), with_role(vectors, roles, [TEST])
    return texts["text"].to_pylist(), arrow_to_vectors(vectors["vector"])


def generated_counts(cfg: RunConfig) -> dict[str, Any]:
    """How many generated queries each passage got per language: a generator's shape is one
    count for all; a passage without held-in questions (stand-in only) gets none."""
    import numpy as np
    import pyarrow.compute as pc

    paths = RunPaths(cfg.root)
    generated = PartitionedTable(paths.generated(cfg.generator.name)).read(columns=["pid", "lang"])
    pids = PartitionedTable(paths.collection).read(columns=["pid"])["pid"]
    languages = cfg.generator.languages
    keys = pc.binary_join_element_wise(generated["pid"], generated["lang"], "\t")
    counts = pc.value_counts(keys).field("counts").to_numpy(zero_copy_only=False)
    missing = len(pids) * len(languages) - len(counts)
    per_pair = np.concatenate([counts, np.zeros(missing, dtype=counts.dtype)])
    with_queries = set(generated["pid"].unique().to_pylist())
    return {
        "passages": len(pids),
        "languages": languages,
        "min": int(per_pair.min()),
        "max": int(per_pair.max()),
        "passages_without_queries": sum(pid not in with_queries for pid in pids.to_pylist()),
        "pairs_without_queries": int(missing),
    }


def measure_costs(cfg: RunConfig, echo: Echo, service: bool = True) -> None:
    """cost.json (indexing), latency.json (in-process) and service.json (HTTP)."""
    from xqg_ray.evaluate.service_check import check_service
    from xqg_ray.report.cost import measure_indexing_cost
    from xqg_ray.report.latency import measure_query_cost

    out = RunPaths(cfg.root).results(cfg.evaluate.experiment)
    hardware = machine_label()
    echo("cost probe: generation and encoding with the real architectures (random weights)")
    write_json_atomic(join(out, "cost.json"), measure_indexing_cost(cfg, hardware))
    echo("query-time probe: query encoding and in-process search per strategy")
    texts, vectors = reported_queries(cfg)
    write_json_atomic(join(out, "latency.json"), measure_query_cost(cfg, hardware, texts, vectors))
    if not service:
        return
    strategy = "xqg" if "xqg" in cfg.augment.strategies else cfg.augment.strategies[0]
    echo(f"service probe: the {strategy} index behind Ray Serve on 127.0.0.1")
    result = check_service(cfg, strategy, latency_requests=cfg.cost.service_requests)
    write_json_atomic(join(out, "service.json"), {**result, "hardware": hardware})
    if result["agree"] != result["queries"] or result["partial"]:
        from xqg_ray.errors import XqgError

        first = (result.get("differences") or ["a partial answer"])[0]
        raise XqgError(f"the search service disagrees with the offline search: {first}")
