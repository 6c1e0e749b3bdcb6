"""Evaluate every strategy in every cross-lingual setting of `evaluate.settings`.

A setting (`datasets/settings.py`) is a list of (query language -> passage languages) pairs. A pair
searches its language's queries in an index of exactly those passage languages: the collection's
own index when the pair covers all of them, else a subset index built from the same stored entries
(`stages/index.py`). Each (strategy, passage-language set) is searched once for every query
language that needs it: offline on Ray Data, through the Serve endpoint, or both (then the two runs
must rank identically). Qrels are cut to each pair's passages, so a question is judged against the
passages its setting can retrieve.

Outputs under `results/<experiment>/`:

    <setting>/<strategy>.run, qrels.txt    TREC run and qrels files of each setting
    <setting>/metrics.json                 that setting's metrics
    per_query.parquet                      setting, strategy, qid, lang, measure, value
    evaluation.json, evaluation.md         every setting; strategy x language tables with p-values
    metrics.json, <strategy>.run           the first (headline) setting, where they always were
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.config import RunConfig
from xqg_ray.datasets.settings import Setting, parse_setting
from xqg_ray.datasets.splits import TEST, with_role
from xqg_ray.errors import ConfigError, InputError
from xqg_ray.evaluate.tables import evaluation_markdown
from xqg_ray.index.shards import load_manifest
from xqg_ray.paths import RunPaths
from xqg_ray.stages.evaluate import (
    judged_qrels,
    kt_budget,
    per_query_table,
    score_run,
    summarize,
)
from xqg_ray.stages.index import (
    build_index,
    current_manifest,
    entries_url,
    index_meta,
    index_url,
    languages_label,
)
from xqg_ray.stages.roles import run_roles
from xqg_ray.stages.search import compare_runs, search_offline, write_trec_run
from xqg_ray.stages.service_search import ServiceSearch
from xqg_ray.storage import (
    PartitionedTable,
    exists,
    join,
    read_table,
    table_to_parquet_bytes,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

XTREME_MEASURE = "mAP@20"  # XQuAD-R's measure in XTREME-R
XOR_MEASURES = ("R@2kt", "R@5kt")  # XOR-Retrieve's measures
BUILD_HINT = (
    "run the build with the same config first: `python jobs/build_index.py --config <config>` "
    "(or `xqg-ray build --config <config>`)"
)

Languages = tuple[str, ...]


@dataclass
class RunInputs:
    """What every setting reads from a built run root, read once: query-sized tables, and of
    the collection only its size per language and the languages of the judged passages."""

    passage_counts: dict[str, int]  # indexed passages per language
    judged_passages: pa.Table  # pid, lang of the passages the qrels name
    queries: pa.Table  # qid, lang, text of every evaluation query
    vectors: pa.Table  # qid, lang, vector of the same queries
    qrels: pa.Table
    answers: dict[str, list[str]]

    @property
    def passage_languages(self) -> list[str]:
        return sorted(self.passage_counts)

    @property
    def query_languages(self) -> list[str]:
        return sorted(set(self.queries["lang"].to_pylist()))


def require_build(cfg: RunConfig) -> None:
    """Every index and table the evaluation reads must exist, built with this config."""
    for strategy in cfg.augment.strategies:
        url = index_url(cfg, strategy)
        if not exists(join(url, "manifest.json")):
            raise InputError(f"{url}: no {strategy!r} index (manifest.json missing): {BUILD_HINT}")
        if current_manifest(url, index_meta(cfg, strategy)) is None:
            raise ConfigError(
                f"{url} was built with other parameters than this config asks for "
                f"({load_manifest(url).get('meta')}): evaluate with the build's config, or "
                "rebuild under a new run root"
            )
    paths = RunPaths(cfg.root)
    tables = [paths.collection, paths.queryset, paths.embeddings(cfg.encoder.name, "queries")]
    tables += [entries_url(cfg, strategy) for strategy in cfg.augment.strategies]
    for url in tables:
        if not PartitionedTable(url).is_complete():
            raise InputError(f"{url}: missing or incomplete: {BUILD_HINT}")


def query_answers(cfg: RunConfig) -> dict[str, list[str]]:
    """qid -> answer strings (what R@kt looks for), for the queries that have any."""
    corpus_queries = read_table(RunPaths(cfg.root).corpus("queries"))
    if "answers" not in corpus_queries.column_names:
        return {}
    return {
        qid: values
        for qid, values in zip(
            corpus_queries["qid"].to_pylist(), corpus_queries["answers"].to_pylist(), strict=True
        )
        if values
    }


def collection_languages(cfg: RunConfig) -> dict[str, int]:
    """Indexed passages per language, counted part by part in Arrow (never a corpus-sized
    Python list)."""
    collection = PartitionedTable(RunPaths(cfg.root).collection)
    counts: dict[str, int] = {}
    for part in sorted(collection.manifest()["parts"]):
        for item in pc.value_counts(collection.read_part(part, columns=["lang"])["lang"]):
            lang = item["values"].as_py()
            counts[lang] = counts.get(lang, 0) + item["counts"].as_py()
    return counts


def passage_languages(cfg: RunConfig) -> list[str]:
    return sorted(collection_languages(cfg))


def judged_passages(cfg: RunConfig, qrels: pa.Table) -> pa.Table:
    """pid, lang of the indexed passages the qrels name, read part by part."""
    collection = PartitionedTable(RunPaths(cfg.root).collection)
    wanted = qrels["pid"].unique()
    tables = [
        table.filter(pc.is_in(table["pid"], value_set=wanted))
        for table in (
            collection.read_part(part, columns=["pid", "lang"])
            for part in sorted(collection.manifest()["parts"])
        )
    ]
    return pa.concat_tables(tables) if tables else pa.table({"pid": [], "lang": []})


def read_inputs(cfg: RunConfig) -> RunInputs:
    paths = RunPaths(cfg.root)
    queries = PartitionedTable(paths.queryset).read(columns=["qid", "lang", "text"])
    vectors = PartitionedTable(paths.embeddings(cfg.encoder.name, "queries")).read(
        columns=["qid", "lang", "vector"]
    )
    if cfg.tuning.dev_fraction > 0:  # dev queries choose settings; only test ones are reported
        roles = run_roles(cfg)
        queries, vectors = with_role(queries, roles, [TEST]), with_role(vectors, roles, [TEST])
    qrels = read_table(paths.corpus("qrels"))
    return RunInputs(
        passage_counts=collection_languages(cfg),
        judged_passages=judged_passages(cfg, qrels),
        queries=queries,
        vectors=vectors,
        qrels=qrels,
        answers=query_answers(cfg),
    )


def resolve_setting(name: str, query_langs: list[str], passage_langs: list[str]) -> Setting:
    """The setting's pairs for this run: query languages that have queries, against passage
    languages the collection holds (`pool` means all of them); anything else is a ConfigError."""
    setting = parse_setting(name, sorted(set(query_langs) | set(passage_langs)))
    pairs = []
    for query, targets in setting.pairs:
        if query not in query_langs:
            continue  # a language with passages but no evaluation queries
        if setting.name == "pool":
            targets = tuple(passage_langs)
        missing = [lang for lang in targets if lang not in passage_langs]
        if missing:
            raise ConfigError(
                f"evaluate.settings: {name!r} searches {query} queries in {missing} passages, "
                f"but the collection holds only {passage_langs}: add them to "
                "collection.passage_languages and rebuild under a new run root"
            )
        pairs.append((query, tuple(sorted(targets))))
    if not pairs:
        raise ConfigError(
            f"evaluate.settings: {name!r} has no evaluation queries (query languages {query_langs})"
        )
    return Setting(setting.name, tuple(pairs))


def setting_measures(cfg: RunConfig, has_qrels: bool, has_answers: bool) -> list[str]:
    """The configured measures this data can score, plus its benchmark's own (mAP@20 for
    XQuAD-R; R@2kt and R@5kt for answer-only data such as XOR-TyDi)."""
    configured = list(dict.fromkeys(cfg.evaluate.measures))
    judged = [m for m in configured if kt_budget(m) is None]
    answer_based = [m for m in configured if kt_budget(m) is not None]
    if cfg.dataset.name == "xquad_r" and XTREME_MEASURE not in judged:
        judged.append(XTREME_MEASURE)
    if answer_based and not has_answers:
        raise ConfigError(
            f"evaluate.measures: {answer_based} need answer strings, and the queries have none"
        )
    if not has_qrels:
        judged = []
        if has_answers and not answer_based:
            answer_based = list(XOR_MEASURES)
    measures = judged + answer_based
    if not measures:
        raise ConfigError("nothing to evaluate: the corpus has no qrels and its queries no answers")
    return measures


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


def _in_languages(table: pa.Table, langs: list[str] | Languages) -> pa.Table:
    return table.filter(pc.is_in(table["lang"], value_set=pa.array(list(langs), pa.string())))


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
    with ServiceSearch(cfg, len(cfg.augment.strategies) * len(searches)) as service:
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
                        _in_languages(inputs.vectors, sorted(query_langs)),
                        cfg.search.depth,
                        cfg.ray,
                        cfg.evaluate.searchers,
                        cfg.evaluate.batch_size,
                        cfg.search.params,
                    )
                    entry["offline_seconds"] = time.perf_counter() - start
                if via in ("service", "both"):
                    start = time.perf_counter()
                    texts = _in_languages(inputs.queries, sorted(query_langs))
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
    check = {"indexes": len(log), "queries": compared, "identical": True} if via == "both" else None
    return runs, {"searches": log, "service_check": check}


def evaluate_setting(
    cfg: RunConfig,
    setting: Setting,
    inputs: RunInputs,
    runs: dict[tuple[str, Languages], pa.Table],
    passage_texts: Callable[[], dict[str, str]],
) -> tuple[dict[str, Any], dict[str, pa.Table], pa.Table, pa.Table]:
    """Metrics of one setting, its per-strategy runs, its qrels and its per-query table."""
    pair_rows = []
    queries, qrels = [], []
    for query_lang, langs in setting.pairs:
        pair_queries = _in_languages(inputs.queries, [query_lang])
        queries.append(pair_queries)
        judged = _in_languages(inputs.judged_passages, langs)
        qrels.append(judged_qrels(inputs.qrels, pair_queries, judged))
        pair_rows.append(
            {
                "query_language": query_lang,
                "passage_languages": list(langs),
                "queries": pair_queries.num_rows,
                "passages": sum(inputs.passage_counts[lang] for lang in langs),
            }
        )
    setting_queries = pa.concat_tables(queries)
    setting_qrels = pa.concat_tables(qrels)
    has_answers = any(qid in inputs.answers for qid in setting_queries["qid"].to_pylist())
    measures = setting_measures(cfg, setting_qrels.num_rows > 0, has_answers)
    setting_runs = {
        strategy: pa.concat_tables(
            [
                runs[(strategy, langs)].filter(
                    pc.is_in(runs[(strategy, langs)]["qid"], value_set=pair["qid"].combine_chunks())
                )
                for (_, langs), pair in zip(setting.pairs, queries, strict=True)
            ]
        )
        for strategy in cfg.augment.strategies
    }
    texts = passage_texts() if any(kt_budget(m) for m in measures) else {}
    per_query = {
        strategy: score_run(run, measures, setting_qrels, inputs.answers, texts)
        for strategy, run in setting_runs.items()
    }
    if not any(per_query.values()):
        raise InputError(
            f"setting {setting.name!r}: no query could be scored with {measures} (no judged "
            "query has a relevant passage among the indexed ones, and none has answers)"
        )
    langs = dict(
        zip(setting_queries["qid"].to_pylist(), setting_queries["lang"].to_pylist(), strict=True)
    )
    metrics = {
        "setting": setting.name,
        "pairs": pair_rows,
        "measures": measures,
        "strategies": summarize(per_query, langs, measures, monolingual_languages(setting)),
        "queries": setting_queries.num_rows,
        "judged_queries": len(next(iter(per_query.values()))),
        "passages": sum(
            inputs.passage_counts[lang] for lang in {lang for _, ls in setting.pairs for lang in ls}
        ),
        "encoder": cfg.encoder.name,
        "generator": cfg.generator.name if _uses_generator(cfg) else None,
    }
    return metrics, setting_runs, setting_qrels, per_query_table(setting.name, per_query, langs)


def monolingual_languages(setting: Setting) -> frozenset[str]:
    """Query languages that search passages of their own language in this setting."""
    return frozenset(query for query, langs in setting.pairs if query in langs)


def ranked_passage_texts(
    cfg: RunConfig, runs: dict[tuple[str, Languages], pa.Table]
) -> dict[str, str]:
    """pid -> text of every ranked passage (what R@kt reads), read from the collection once,
    part by part, keeping only the ranked ones (never the whole collection's texts at once)."""
    ranked = pa.concat_tables(list(runs.values()))["pid"].unique()
    collection = PartitionedTable(RunPaths(cfg.root).collection)
    texts: dict[str, str] = {}
    for part in sorted(collection.manifest()["parts"]):
        table = collection.read_part(part, columns=["pid", "text"])
        table = table.filter(pc.is_in(table["pid"], value_set=ranked))
        texts.update(zip(table["pid"].to_pylist(), table["text"].to_pylist(), strict=True))
    return texts


def trec_qrels_text(qrels: pa.Table) -> str:
    """`qid 0 pid relevance` lines, the format trec_eval reads beside the run files."""
    lines = [
        f"{qid} 0 {pid} {rel}"
        for qid, pid, rel in zip(
            qrels["qid"].to_pylist(),
            qrels["pid"].to_pylist(),
            qrels["relevance"].to_pylist(),
            strict=True,
        )
    ]
    return "\n".join(lines) + ("\n" if lines else "")


def setting_folder(name: str) -> str:
    """A folder name for a setting: explicit pair lists `ar-en,de-en` become `ar-en+de-en`."""
    return name.replace(",", "+").replace(" ", "")


def write_runs(out: str, runs: dict[str, pa.Table]) -> None:
    for strategy, run in runs.items():
        write_trec_run(join(out, f"{strategy}.run"), run, f"xqg-ray-{strategy}")


def evaluate_settings(cfg: RunConfig) -> dict[str, Any]:
    """Search and score every strategy in every configured setting; write the results.

    Returns the evaluation: the first (headline) setting's metrics at the top level
    (`strategies`, `measures`, `queries`, `judged_queries`, `passages`, ...), every setting's
    under `settings`, plus `via`, `searches` (timings), `service_check` and `config`.
    """
    require_build(cfg)
    inputs = read_inputs(cfg)
    passage_langs = inputs.passage_languages
    settings = [
        resolve_setting(name, inputs.query_languages, passage_langs)
        for name in dict.fromkeys(cfg.evaluate.settings)
    ]
    runs, search_log = search_all(cfg, inputs, settings)
    passage_texts = functools.cache(functools.partial(ranked_passage_texts, cfg, runs))
    out = RunPaths(cfg.root).results(cfg.evaluate.experiment)
    by_setting: dict[str, dict[str, Any]] = {}
    per_query_tables = []
    headline_runs: dict[str, pa.Table] = {}
    for setting in settings:
        metrics, setting_runs, qrels, per_query = evaluate_setting(
            cfg, setting, inputs, runs, passage_texts
        )
        folder = join(out, setting_folder(setting.name))
        write_runs(folder, setting_runs)
        write_text_atomic(join(folder, "qrels.txt"), trec_qrels_text(qrels))
        write_json_atomic(join(folder, "metrics.json"), metrics)
        by_setting[setting.name] = metrics
        per_query_tables.append(per_query)
        headline_runs = headline_runs or setting_runs
    config = json.loads(cfg.model_dump_json())
    headline = by_setting[settings[0].name]
    evaluation = {
        **headline,
        "headline": settings[0].name,
        "experiment": cfg.evaluate.experiment,
        "via": cfg.evaluate.via,
        "split": "test" if cfg.tuning.dev_fraction > 0 else "all",
        "settings": by_setting,
        **search_log,
        "config": config,
    }
    write_bytes_atomic(
        join(out, "per_query.parquet"), table_to_parquet_bytes(pa.concat_tables(per_query_tables))
    )
    write_json_atomic(join(out, "evaluation.json"), evaluation)
    write_text_atomic(join(out, "evaluation.md"), evaluation_markdown(evaluation))
    write_runs(out, headline_runs)
    write_json_atomic(join(out, "metrics.json"), {**headline, "config": config})
    return evaluation


def _uses_generator(cfg: RunConfig) -> bool:
    """Whether any evaluated index folds in generated queries (every strategy but dense)."""
    return any(strategy != "dense" for strategy in cfg.augment.strategies)
