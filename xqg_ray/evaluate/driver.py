"""Evaluate every strategy in every cross-lingual setting of `evaluate.settings`.

A setting (`datasets/settings.py`) is a list of (query language -> passage languages) pairs. A pair
searches its language's queries in an index of exactly those passage languages (`searches.py`):
each (strategy, passage-language set) is searched once for every query language that needs it,
offline on Ray, through the Serve endpoint, or both (then the two runs must rank identically).
Qrels are cut to each pair's passages, so a question is judged against the passages its setting
can retrieve.

Outputs under `results/<experiment>/`:

    <setting>/<strategy>.run, qrels.txt    TREC run and qrels files of each setting
    <setting>/metrics.json                 that setting's metrics
    per_query.parquet                      setting, strategy, qid, lang, group, measure, value
    evaluation.json, evaluation.md         every setting; strategy x language tables with paired
                                           tests (question groups as the unit, `evaluate/paired.py`)
    metrics.json, <strategy>.run           the first (headline) setting, where they always were
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.config import RunConfig
from xqg_ray.datasets.settings import Setting
from xqg_ray.errors import InputError
from xqg_ray.evaluate.inputs import (
    RunInputs,
    in_languages,
    ranked_passage_texts,
    read_inputs,
    require_build,
)
from xqg_ray.evaluate.runs import trec_qrels_text, write_runs
from xqg_ray.evaluate.scoring import (
    judged_qrels,
    kt_budget,
    per_query_table,
    score_run,
    summarize,
)
from xqg_ray.evaluate.searches import search_all
from xqg_ray.evaluate.settings import (
    Languages,
    monolingual_languages,
    resolve_setting,
    setting_measures,
)
from xqg_ray.evaluate.tables import evaluation_markdown
from xqg_ray.paths import RunPaths
from xqg_ray.storage import (
    join,
    table_to_parquet_bytes,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


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
        pair_queries = in_languages(inputs.queries, [query_lang])
        queries.append(pair_queries)
        judged = in_languages(inputs.judged_passages, langs)
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
        "strategies": summarize(
            per_query, langs, measures, monolingual_languages(setting), inputs.groups
        ),
        "queries": setting_queries.num_rows,
        "judged_queries": len(next(iter(per_query.values()))),
        "passages": sum(
            inputs.passage_counts[lang] for lang in {lang for _, ls in setting.pairs for lang in ls}
        ),
        "encoder": cfg.encoder.name,
        "generator": cfg.generator.name if _uses_generator(cfg) else None,
    }
    table = per_query_table(setting.name, per_query, langs, inputs.groups)
    return metrics, setting_runs, setting_qrels, table


def setting_folder(name: str) -> str:
    """A folder name for a setting: explicit pair lists `ar-en,de-en` become `ar-en+de-en`."""
    return name.replace(",", "+").replace(" ", "")


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
