"""XQuAD: 240 paragraphs and 1190 questions, professionally translated into parallel languages.

Passages are paragraphs, `pid = "{lang}-{group}"` with `group = p{article:04d}-{paragraph:02d}`;
queries are questions, `qid = "{lang}-{question id}"` with the question id as `group`. A question
is relevant to its paragraph in every loaded language, so one corpus serves every cross-lingual
setting: a setting selects languages and the qrels follow (see `settings.select`).
"""

from __future__ import annotations

import pyarrow as pa

from xqg_ray.datasets.corpus import Corpus, build_table, qrels_table
from xqg_ray.datasets.squad import LanguageFile, read_parallel

FILE_PATTERN = r"xquad\.(?P<lang>[A-Za-z-]+)\.json"


def load_xquad(data_dir: str, languages: list[str] | None = None) -> Corpus:
    """All `xquad.<lang>.json` files in `data_dir` (or only `languages`) as one corpus."""
    files = read_parallel(data_dir, FILE_PATTERN, "xquad.<lang>.json", languages)
    return Corpus(
        passages=_passages(files),
        queries=queries_table(files),
        qrels=qrels_table(
            (f"{file.lang}-{q.id}", f"{other.lang}-{paragraph.group}")
            for file in files
            for paragraph in file.paragraphs
            for q in paragraph.questions
            for other in files
        ),
        name="xquad",
    ).validate()


def _passages(files: list[LanguageFile]) -> pa.Table:
    rows = [(file.lang, paragraph) for file in files for paragraph in file.paragraphs]
    return build_table(
        "passages",
        {
            "pid": [f"{lang}-{p.group}" for lang, p in rows],
            "lang": [lang for lang, _ in rows],
            "title": [p.title for _, p in rows],
            "text": [p.context for _, p in rows],
            "group": [p.group for _, p in rows],
        },
    )


def queries_table(files: list[LanguageFile]) -> pa.Table:
    """Questions of every language with their answer texts; shared by XQuAD and XQuAD-R."""
    rows = [(file.lang, q) for file in files for p in file.paragraphs for q in p.questions]
    return build_table(
        "queries",
        {
            "qid": [f"{lang}-{q.id}" for lang, q in rows],
            "lang": [lang for lang, _ in rows],
            "text": [q.text for _, q in rows],
            "answers": [q.answers for _, q in rows],
            "group": [q.id for _, q in rows],
        },
    )
