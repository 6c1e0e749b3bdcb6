"""Parallel SQuAD v1.1 files (XQuAD, XQuAD-R): one file per language, same structure in each.

The files carry no paragraph ids, so a paragraph is named by its position, `p{article:04d}-{n:02d}`.
That name is only meaningful if the files really are parallel, so it is checked: every language
must have the same articles, paragraphs per article and question ids per paragraph as the first.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from xqg_ray import storage
from xqg_ray.datasets.readers import clean_text, require, require_text
from xqg_ray.errors import InputError, StorageError


@dataclass
class Question:
    id: str
    text: str
    answers: list[str]
    answer_starts: list[int]


@dataclass
class Paragraph:
    group: str
    title: str
    context: str
    questions: list[Question]
    raw: dict[str, Any] = field(repr=False)  # the JSON object, for format-specific fields
    where: str = ""  # file and JSON path, for error messages


@dataclass
class LanguageFile:
    lang: str
    url: str
    paragraphs: list[Paragraph]


def discover(data_dir: str, pattern: str) -> dict[str, str]:
    """Language -> file URL for files in `data_dir` whose name matches `pattern` (group `lang`)."""
    regex = re.compile(pattern)
    fs, path = storage.url_to_fs(data_dir)
    if not fs.isdir(path):
        raise StorageError(f"{data_dir}: no such directory")
    found = {}
    for entry in fs.ls(path, detail=False):
        match = regex.fullmatch(posixpath.basename(entry.rstrip("/")))
        if match:
            found[match.group("lang")] = storage.join(data_dir, posixpath.basename(entry))
    return dict(sorted(found.items()))


def choose_languages(
    available: dict[str, str], requested: list[str] | None, data_dir: str, pattern_hint: str
) -> dict[str, str]:
    if not available:
        raise StorageError(f"{data_dir}: no dataset files found (expected {pattern_hint})")
    if requested is None:
        return available
    unknown = [lang for lang in requested if lang not in available]
    if unknown:
        raise InputError(
            f"{data_dir}: no file for language(s) {unknown}; available: {sorted(available)}"
        )
    return {lang: available[lang] for lang in dict.fromkeys(requested)}


def read_language_file(lang: str, url: str) -> LanguageFile:
    document = storage.read_json(url)
    if not isinstance(document, dict):
        raise InputError(f"{url}: top level must be a JSON object with a 'data' list")
    articles = require(document, "data", url, list)
    paragraphs = []
    for a, article in enumerate(articles):
        where_article = f"{url}: data[{a}]"
        title = require(_as_object(article, where_article), "title", where_article)
        for n, paragraph in enumerate(require(article, "paragraphs", where_article, list)):
            where = f"{where_article}.paragraphs[{n}]"
            paragraph = _as_object(paragraph, where)
            group = f"p{a:04d}-{n:02d}"
            questions = [
                _question(qa, f"{where}.qas[{i}]")
                for i, qa in enumerate(require(paragraph, "qas", where, list))
            ]
            paragraphs.append(
                Paragraph(
                    group=group,
                    title=clean_text(title).replace("_", " "),
                    context=require_text(paragraph, "context", f"{where} ({group})"),
                    questions=questions,
                    raw=paragraph,
                    where=f"{where} ({group})",
                )
            )
    return LanguageFile(lang=lang, url=url, paragraphs=paragraphs)


def _as_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _question(qa: Any, where: str) -> Question:
    qa = _as_object(qa, where)
    qid = require(qa, "id", where)
    where = f"{where} (id {qid})"
    answers = []
    for j, answer in enumerate(require(qa, "answers", where, list)):
        answer = _as_object(answer, f"{where}.answers[{j}]")
        answers.append(
            (
                require(answer, "text", f"{where}.answers[{j}]"),
                require(answer, "answer_start", f"{where}.answers[{j}]", int),
            )
        )
    return Question(
        id=qid,
        text=require_text(qa, "question", where),
        answers=[text for text, _ in answers],
        answer_starts=[start for _, start in answers],
    )


def _paragraphs_per_article(file: LanguageFile) -> list[int]:
    counts: dict[str, int] = {}
    for paragraph in file.paragraphs:
        article = paragraph.group.split("-")[0]
        counts[article] = counts.get(article, 0) + 1
    return list(counts.values())


def check_parallel(files: list[LanguageFile]) -> None:
    """Same articles, paragraphs and question ids in every file as in the first one."""
    reference = files[0]
    expected_layout = _paragraphs_per_article(reference)
    for other in files[1:]:
        layout = _paragraphs_per_article(other)
        if len(layout) != len(expected_layout):
            raise InputError(
                f"{other.url}: not parallel to {reference.url}: {len(layout)} articles with "
                f"paragraphs, expected {len(expected_layout)}"
            )
        for a, (mine, theirs) in enumerate(zip(layout, expected_layout, strict=True)):
            if mine != theirs:
                raise InputError(
                    f"{other.url}: data[{a}]: {mine} paragraphs, but {theirs} in {reference.url}"
                )
        for mine, theirs in zip(other.paragraphs, reference.paragraphs, strict=True):
            ids, expected = {q.id for q in mine.questions}, {q.id for q in theirs.questions}
            if ids != expected:
                raise InputError(
                    f"{mine.where}: question ids differ from {reference.url}: "
                    f"missing {sorted(expected - ids)}, unexpected {sorted(ids - expected)}"
                )


def read_parallel(
    data_dir: str, pattern: str, pattern_hint: str, languages: list[str] | None
) -> list[LanguageFile]:
    """Discover, filter, read and check the language files of one parallel SQuAD dataset."""
    chosen = choose_languages(discover(data_dir, pattern), languages, data_dir, pattern_hint)
    files = [read_language_file(lang, url) for lang, url in chosen.items()]
    for file in files:
        check_unique_questions(file)
    check_parallel(files)
    return files


def check_unique_questions(file: LanguageFile) -> None:
    seen: dict[str, str] = {}
    for paragraph in file.paragraphs:
        for question in paragraph.questions:
            if question.id in seen:
                raise InputError(
                    f"{paragraph.where}: question id {question.id!r} is also used in paragraph "
                    f"{seen[question.id]}"
                )
            seen[question.id] = paragraph.group
