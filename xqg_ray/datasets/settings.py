"""Cross-lingual evaluation settings as data: which query language searches which passage languages.

One corpus holds every language; a setting names (query language, passage languages) pairs and
`select` cuts the corpus down to one pair, with the qrels that remain inside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.datasets.corpus import Corpus
from xqg_ray.errors import ConfigError

VALID_FORMS = (
    "x-<lang> (every language against <lang> passages, e.g. x-en)",
    "x-x (every language against its own)",
    "pool (every language against all languages)",
    "<q>-<p>[,<q>-<p>...] (explicit pairs, e.g. ar-en or ar-en,de-en)",
)
_FORMS = "; ".join(VALID_FORMS)
_PAIR = re.compile(r"(?P<query>[^\s,-]+)-(?P<passage>[^\s,-]+)")


@dataclass(frozen=True)
class Setting:
    """A named list of (query language, passage languages) pairs, evaluated one pair at a time."""

    name: str
    pairs: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def query_languages(self) -> tuple[str, ...]:
        return tuple(query for query, _ in self.pairs)


def parse_setting(name: str, languages: list[str]) -> Setting:
    """Expand a setting name over the corpus `languages`; a bad name raises ConfigError."""
    langs = list(dict.fromkeys(languages))
    text = name.strip()
    if text == "x-x":
        return Setting(text, tuple((lang, (lang,)) for lang in langs))
    if text == "pool":
        return Setting(text, tuple((lang, tuple(langs)) for lang in langs))
    if text.startswith("x-"):
        target = text[2:]
        _require_languages(text, [target], langs)
        return Setting(text, tuple((lang, (target,)) for lang in langs))
    pairs: dict[str, list[str]] = {}
    for part in text.split(","):
        match = _PAIR.fullmatch(part.strip())
        if not match:
            raise ConfigError(f"unknown cross-lingual setting {name!r}; valid forms: {_FORMS}")
        query, passage = match.group("query"), match.group("passage")
        _require_languages(text, [query, passage], langs)
        targets = pairs.setdefault(query, [])
        if passage not in targets:
            targets.append(passage)
    return Setting(text, tuple((query, tuple(targets)) for query, targets in pairs.items()))


def _require_languages(setting: str, wanted: list[str], languages: list[str]) -> None:
    missing = [lang for lang in wanted if lang not in languages]
    if missing:
        raise ConfigError(
            f"setting {setting!r} needs language(s) {missing}, but the corpus has {languages} "
            f"(valid forms: {_FORMS})"
        )


def select(corpus: Corpus, query_lang: str, passage_langs: tuple[str, ...] | list[str]) -> Corpus:
    """Queries in `query_lang`, passages in `passage_langs`, and the qrels between them.

    Queries whose relevant passages all fall outside the pool are dropped when the corpus has
    qrels; without qrels (answer-based evaluation) every query of the language is kept.
    """
    passage_mask = pc.is_in(
        corpus.passages["lang"], value_set=pa.array(list(passage_langs), pa.string())
    )
    query_mask = pc.equal(corpus.queries["lang"], query_lang)
    return corpus.restrict(passage_mask=passage_mask, query_mask=query_mask)
