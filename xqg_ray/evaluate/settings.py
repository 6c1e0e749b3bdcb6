"""A cross-lingual setting as this run evaluates it: its (query -> passage languages) pairs
and the measures its data can score."""

from __future__ import annotations

from xqg_ray.config import RunConfig
from xqg_ray.datasets.settings import Setting, parse_setting
from xqg_ray.errors import ConfigError
from xqg_ray.evaluate.scoring import kt_budget

XTREME_MEASURE = "mAP@20"  # XQuAD-R's measure in XTREME-R
XOR_MEASURES = ("R@2kt", "R@5kt")  # XOR-Retrieve's measures

Languages = tuple[str, ...]


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


def monolingual_languages(setting: Setting) -> frozenset[str]:
    """Query languages that search passages of their own language in this setting."""
    return frozenset(query for query, langs in setting.pairs if query in langs)
