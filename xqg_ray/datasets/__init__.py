"""Dataset adapters: data files in, a `Corpus` of passages, queries and qrels tables out."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.config import DatasetConfig
from xqg_ray.datasets.corpus import Corpus
from xqg_ray.datasets.fetch import ensure_dataset
from xqg_ray.datasets.generic import load_generic
from xqg_ray.datasets.settings import Setting, parse_setting, select
from xqg_ray.datasets.xor_tydi import load_xor_tydi
from xqg_ray.datasets.xquad import load_xquad
from xqg_ray.datasets.xquad_r import load_xquad_r
from xqg_ray.errors import ConfigError

__all__ = [
    "Corpus",
    "Setting",
    "ensure_dataset",
    "first_passage_groups",
    "load_corpus",
    "load_generic",
    "load_xor_tydi",
    "load_xquad",
    "load_xquad_r",
    "parse_setting",
    "select",
]


def load_corpus(cfg: DatasetConfig) -> Corpus:
    """The corpus a run config names, with its `languages` and `max_passages` cuts applied.

    `languages` keeps passages and queries of those languages; for xor_tydi, whose passages are
    one English collection, it keeps queries of those languages and every passage.
    """
    if cfg.name in ("xquad", "xquad_r"):
        folder = ensure_dataset(cfg.name, cfg.data_dir or None)
        loader = load_xquad if cfg.name == "xquad" else load_xquad_r
        corpus = loader(folder, cfg.languages)
    elif cfg.name == "generic":
        _require(cfg, "passages")
        corpus = load_generic(cfg.passages, cfg.queries or None, cfg.qrels or None)
        corpus = _keep_languages(corpus, cfg.languages, passages_too=True)
    else:
        _require(cfg, "queries", "passages")
        corpus = load_xor_tydi(cfg.queries, cfg.passages)
        corpus = _keep_languages(corpus, cfg.languages, passages_too=False)
    if cfg.max_passages:
        corpus = first_passage_groups(corpus, cfg.max_passages)
    return corpus


def _require(cfg: DatasetConfig, *fields: str) -> None:
    missing = [f"dataset.{field}" for field in fields if not getattr(cfg, field)]
    if missing:
        raise ConfigError(f"dataset {cfg.name!r} needs {' and '.join(missing)}")


def _keep_languages(corpus: Corpus, languages: list[str] | None, passages_too: bool) -> Corpus:
    if languages is None:
        return corpus
    available = corpus.languages
    unknown = [lang for lang in languages if lang not in available]
    if unknown:
        raise ConfigError(f"dataset.languages: {unknown} not in the corpus (has {available})")
    wanted = pa.array(languages, pa.string())
    return corpus.restrict(
        passage_mask=pc.is_in(corpus.passages["lang"], value_set=wanted) if passages_too else None,
        query_mask=pc.is_in(corpus.queries["lang"], value_set=wanted),
    )


def first_passage_groups(corpus: Corpus, count: int) -> Corpus:
    """The first `count` passage groups (parallel units; pids where there is no group column),
    in table order, with the queries judged against them (all queries when there are no qrels)."""
    key = "group" if "group" in corpus.passages.column_names else "pid"
    keep = pc.unique(corpus.passages[key]).slice(0, count)
    return corpus.restrict(passage_mask=pc.is_in(corpus.passages[key], value_set=keep))
