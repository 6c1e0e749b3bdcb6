"""The evaluation's searches: one run per (strategy, passage-language set), by `evaluate.via`.

A pair of a setting searches its queries in an index of exactly its passage languages: the
collection's own index when the pair covers all of them, else a subset index built from the same
stored entries (`stages/index.py`). With `via: both` the service's run must rank as the offline
one (`runs.compare_runs`).
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from xqg_ray.config import RunConfig
from xqg_ray.console import stage
from xqg_ray.datasets.settings import Setting
from xqg_ray.evaluate.inputs import RunInputs, in_languages
from xqg_ray.evaluate.offline_search import search_offline
from xqg_ray.evaluate.runs import compare_runs
from xqg_ray.evaluate.service_search import ServiceQueryRunner
from xqg_ray.evaluate.settings import Languages
from xqg_ray.index.shards import load_manifest
from xqg_ray.stages.index import (
    build_index,
    current_manifest,
    index_meta,
    index_url,
    languages_label,
)


def ensure_indexes(
    cfg: RunConfig, strategy: str, language_sets: list[Languages], full: Languages
) -> dict[Languages, str]:
    """The index of each passage-language set: the build's own for the whole collection, a
    subset index (built here if missing or stale) for the others, by the same parallel
    build from the entries' parts (the driver never reads the entries)."""
    urls: dict[Languages, str] = {}
    for langs in language_sets:
        if langs == full:
            urls[langs] = index_url(cfg, strategy)
            continue
        if current_manifest(index_url(cfg, strategy, langs), index_meta(cfg, strategy, langs)):
            urls[langs] = index_url(cfg, strategy, langs)
            continue
        build_index(cfg, strategy, langs)
        urls[langs] = index_url(cfg, strategy, langs)
    return urls


def search_all(
    cfg: RunConfig, inputs: RunInputs, settings: list[Setting]
) -> tuple[dict[tuple[str, Languages], pa.Table], dict[str, Any]]:
    """One run per (strategy, passage-language set) over every query language that needs it,
    by `evaluate.via`; with `both`, the service's run must equal the offline one."""
    searches: dict[Languages, set[str]] = {}
    for setting in settings:
        for query, langs in setting.pairs:
            searches.setdefault(langs, set()).add(query)
    full = tuple(inputs.passage_languages)
    via = cfg.evaluate.via
    runs: dict[tuple[str, Languages], pa.Table] = {}
    log: list[dict[str, Any]] = []
    compared = 0
    n_searches = len(cfg.augment.strategies) * len(searches)
    with (
        ServiceQueryRunner(cfg, n_searches) as service,
        stage("evaluate", n_searches, "index", cfg.ray.progress_bars) as advance,
    ):
        for strategy in cfg.augment.strategies:
            urls = ensure_indexes(cfg, strategy, sorted(searches), full)
            for langs, query_langs in sorted(searches.items()):
                label = languages_label(langs)
                entry: dict[str, Any] = {
                    "strategy": strategy,
                    "passage_languages": list(langs),
                    "query_languages": sorted(query_langs),
                    "index": urls[langs],
                    "search_params": cfg.search.params
                    or load_manifest(urls[langs]).get("search_params", ""),
                }
                found: dict[str, pa.Table] = {}
                if via in ("offline", "both"):
                    start = time.perf_counter()
                    found["offline"] = search_offline(
                        urls[langs],
                        in_languages(inputs.vectors, sorted(query_langs)),
                        cfg.search.depth,
                        cfg.ray,
                        cfg.evaluate.searchers,
                        cfg.evaluate.batch_size,
                        cfg.search.params,
                    )
                    entry["offline_seconds"] = time.perf_counter() - start
                if via in ("service", "both"):
                    start = time.perf_counter()
                    texts = in_languages(inputs.queries, sorted(query_langs))
                    found["service"] = service.run(
                        strategy, label, urls[langs], texts.select(["qid", "text"])
                    )
                    entry["service_seconds"] = time.perf_counter() - start
                if via == "both":
                    compared += compare_runs(
                        found["offline"],
                        found["service"],
                        f"{strategy} index of {label} passages, offline vs service",
                    )
                run = found["offline"] if "offline" in found else found["service"]
                entry["queries"] = len(set(run["qid"].to_pylist()))
                runs[(strategy, langs)] = run
                log.append(entry)
                advance(entry["queries"])
    check = {"indexes": len(log), "queries": compared, "identical": True} if via == "both" else None
    return runs, {"searches": log, "service_check": check}
