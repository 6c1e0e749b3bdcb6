"""XQuAD-R (LAReQA): answer-sentence retrieval from one pool of sentences in every language.

Candidates are the sentences of every paragraph (`paragraphs[].sentences`), with the paragraph as
`context`; `pid = "{lang}-{group}-s{n}"` and `group` is the paragraph group, the unit that is
parallel across languages (sentence counts are not: Thai has 852 sentences, English 1180).

Relevance: a question is relevant to the sentence that contains its (first) answer start, in every
language, so with 11 languages each question has 11 relevant sentences. A sentence break
`[start, end]` is read as the half-open span `start <= answer_start < end`. On the published
files this puts every question of every language in exactly one sentence; an inclusive end would
give 29 Chinese questions two sentences, because Chinese breaks abut (`end == next start`) and the
answer starts the second one.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

from xqg_ray.datasets.corpus import Corpus, build_table, qrels_table
from xqg_ray.datasets.readers import clean_text
from xqg_ray.datasets.squad import LanguageFile, Paragraph, read_parallel
from xqg_ray.datasets.xquad import queries_table
from xqg_ray.errors import InputError

FILE_PATTERN = r"(?P<lang>[A-Za-z-]+)\.json"


def load_xquad_r(data_dir: str, languages: list[str] | None = None) -> Corpus:
    """All `<lang>.json` files in `data_dir` (or only `languages`) as one sentence pool."""
    files = read_parallel(data_dir, FILE_PATTERN, "<lang>.json", languages)
    pids, langs, titles, texts, contexts, groups = [], [], [], [], [], []
    answer_pid: dict[tuple[str, str], str] = {}  # (lang, question id) -> relevant sentence
    for file in files:
        for paragraph in file.paragraphs:
            breaks, sentences = _sentences(paragraph)
            stem = f"{file.lang}-{paragraph.group}-s"
            for n, sentence in enumerate(sentences):
                pids.append(f"{stem}{n}")
                langs.append(file.lang)
                titles.append(paragraph.title)
                texts.append(sentence)
                contexts.append(paragraph.context)
                groups.append(paragraph.group)
            for question in paragraph.questions:
                n = _answer_sentence(paragraph, breaks, question.answer_starts, question.id)
                answer_pid[(file.lang, question.id)] = f"{stem}{n}"
    passages = build_table(
        "passages",
        {
            "pid": pids,
            "lang": langs,
            "title": titles,
            "text": texts,
            "group": groups,
            "context": contexts,
        },
    )
    return Corpus(
        passages=passages,
        queries=queries_table(files),
        qrels=qrels_table(_relevant_pairs(files, answer_pid)),
        name="xquad_r",
    ).validate()


def _relevant_pairs(
    files: list[LanguageFile], answer_pid: dict[tuple[str, str], str]
) -> Iterator[tuple[str, str]]:
    for file in files:
        for paragraph in file.paragraphs:
            for question in paragraph.questions:
                for other in files:
                    yield f"{file.lang}-{question.id}", answer_pid[(other.lang, question.id)]


def _sentences(paragraph: Paragraph) -> tuple[list[tuple[int, int]], list[str]]:
    """Validated sentence breaks (sorted, non-overlapping) and cleaned sentence texts."""
    where = paragraph.where
    raw: dict[str, Any] = paragraph.raw
    breaks_raw, sentences_raw = raw.get("sentence_breaks"), raw.get("sentences")
    for field, value in (("sentence_breaks", breaks_raw), ("sentences", sentences_raw)):
        if not isinstance(value, list):
            raise InputError(f"{where}: missing field {field!r} (a list)")
    if len(breaks_raw) != len(sentences_raw):
        raise InputError(
            f"{where}: {len(sentences_raw)} sentences but {len(breaks_raw)} sentence_breaks"
        )
    breaks: list[tuple[int, int]] = []
    sentences: list[str] = []
    for n, (span, sentence) in enumerate(zip(breaks_raw, sentences_raw, strict=True)):
        valid_span = (
            isinstance(span, list) and len(span) == 2 and all(isinstance(x, int) for x in span)
        )
        if not valid_span or span[0] > span[1] or (breaks and span[0] < breaks[-1][1]):
            raise InputError(
                f"{where}: sentence_breaks[{n}] = {span!r} is not an increasing [start, end] span"
            )
        text = clean_text(sentence) if isinstance(sentence, str) else ""
        if not text:
            raise InputError(f"{where}: field 'sentences[{n}]' is empty or not a string")
        breaks.append((span[0], span[1]))
        sentences.append(text)
    return breaks, sentences


def _answer_sentence(
    paragraph: Paragraph, breaks: list[tuple[int, int]], starts: list[int], question_id: str
) -> int:
    """Index of the sentence whose half-open break span holds the first answer start."""
    if not starts:
        raise InputError(f"{paragraph.where}: question {question_id!r} has no answer")
    n = bisect.bisect_right([start for start, _ in breaks], starts[0]) - 1
    if n < 0 or starts[0] >= breaks[n][1]:
        raise InputError(
            f"{paragraph.where}: question {question_id!r}: answer_start {starts[0]} is in no "
            f"sentence break"
        )
    return n
