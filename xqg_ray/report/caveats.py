"""What the report's figures rest on, said in the report itself.

A reader of the answer must not need the README to know that the stand-in is an upper bound,
that the official generator never learnt most of the evaluated languages, which model and
engine produced each figure, and what a significance test's unit is.
"""

from __future__ import annotations

from typing import Any

from xqg_ray.config import GeneratorConfig
from xqg_ray.evaluate.tables import unit_line

OFFICIAL_GENERATOR = GeneratorConfig().model  # ielabgroup/xor-tydi-docTquery-mt5-base
# XOR-TyDi's seven query languages, the official generator's fine-tuning data
OFFICIAL_LANGUAGES = ("ar", "bn", "fi", "ja", "ko", "ru", "te")
STANDIN = "question_split"


def _engines(stats: dict[str, Any], *stages: str) -> str:
    found = {stats[s]["engine"] for s in stages if stats.get(s, {}).get("engine")}
    return ", ".join(f"`{engine}`" for engine in sorted(found)) or "engine not recorded"


def generator_caveats(evaluation: dict[str, Any]) -> list[str]:
    """The stand-in's bound and the official checkpoint's languages against the run's."""
    generator = evaluation["config"]["generator"]
    lines = []
    if generator["backend"] == STANDIN:
        lines.append(
            "The generated queries are the question-split stand-in's: human-written questions "
            "of a disjoint split of the same dataset play mT5's output. Effectiveness is an "
            "upper bound for a perfect generator, not what mT5 would give."
        )
    if generator["model"] == OFFICIAL_GENERATOR:
        langs = sorted({lang for s in evaluation["strategies"].values() for lang in s["per_lang"]})
        shared = [lang for lang in langs if lang in OFFICIAL_LANGUAGES]
        lines.append(
            f"The official generator `{OFFICIAL_GENERATOR}` was fine-tuned on XOR-TyDi's seven "
            f"languages ({' '.join(OFFICIAL_LANGUAGES)}); of this run's query languages "
            f"({' '.join(langs)}) only {', '.join(shared) or 'none'} are among them."
        )
    return lines


def model_caveats(
    stats: dict[str, Any],
    evaluation: dict[str, Any] | None,
    cost: dict[str, Any] | None,
    latency: dict[str, Any] | None,
) -> list[str]:
    """The encoder, generator and engine behind each kind of figure."""
    lines = []
    if evaluation:
        lines.append(
            f"Effectiveness: encoder `{evaluation['encoder']}` (passages on "
            f"{_engines(stats, 'encode-passages')}, queries on {_engines(stats, 'encode-queries')}"
            f"), generator `{evaluation['generator']}` ({_engines(stats, 'generate')}), "
            f"setting `{evaluation['headline']}`, {evaluation['judged_queries']:,} judged "
            f"queries ({'test queries only' if evaluation.get('split') == 'test' else 'all'})."
        )
    if cost:
        gen = cost["generation"]
        encoders = "; ".join(
            f"{name} ({enc['weights']}) on `{enc['engine']}`"
            for name, enc in cost["encoders"].items()
        )
        lines.append(
            f"Indexing cost: generator {gen['model']} on `{gen['engine']}`; encoders {encoders}; "
            f"on {cost['hardware']}."
        )
    if latency:
        enc = latency["encoder"]
        lines.append(
            f"Query time: query encoder {enc['name']} on `{enc['engine']}` one query at a time "
            f"and `{enc.get('batch_engine', enc['engine'])}` in batches; FAISS in-process search "
            f"on {latency['faiss_threads']} thread(s); on {latency['hardware']}."
        )
    return lines


def caveats(
    stats: dict[str, Any],
    evaluation: dict[str, Any] | None,
    tuning: dict[str, Any] | None,
    cost: dict[str, Any] | None,
    latency: dict[str, Any] | None,
) -> list[str]:
    """The report's caveat bullets: generator, significance unit, models and engines."""
    lines = generator_caveats(evaluation) if evaluation else []
    tested = [evaluation["strategies"]] if evaluation else []
    tested += [tuning["test"]] if tuning else []
    lines += list(dict.fromkeys(map(unit_line, tested)))
    lines += model_caveats(stats, evaluation, cost, latency)
    return [f"- {line}" for line in lines]
