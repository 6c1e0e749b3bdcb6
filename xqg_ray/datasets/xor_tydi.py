"""XOR-TyDi XOR-Retrieve: questions in seven languages against English Wikipedia passages.

Queries are the official dev/test JSON Lines (`id`, `question`, `lang`, `answers`; the test split
has no answers). Passages are DPR's `psgs_w100.tsv` layout (a header line naming `id`, `text`,
`title` in any order, CSV quoting) or JSON Lines with `id`, `title`, `text`. There are no qrels:
XOR-Retrieve is scored by whether an answer string occurs in the top retrieved text (R@kt).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from xqg_ray.datasets.corpus import Corpus, build_table, check_table, empty_table
from xqg_ray.datasets.readers import (
    file_format,
    iter_jsonl,
    iter_tsv,
    require,
    require_id,
    require_text,
)
from xqg_ray.errors import InputError

PASSAGE_COLUMNS = ("id", "text", "title")
_BATCH_ROWS = 100_000  # build Arrow batches as we go: psgs_w100.tsv has 21M rows


def load_xor_tydi(queries: str, passages: str, passage_lang: str = "en") -> Corpus:
    """Queries with their answers and a passage collection (all in `passage_lang`), no qrels."""
    return Corpus(
        passages=read_passages(passages, passage_lang),
        queries=read_queries(queries),
        qrels=empty_table("qrels"),
        name="xor_tydi",
    ).validate()


def read_queries(url: str) -> pa.Table:
    columns: dict[str, list[Any]] = {"qid": [], "lang": [], "text": [], "answers": []}
    for number, record in iter_jsonl(url):
        where = f"{url}: line {number}"
        qid = require_id(record, "id", where)
        where = f"{where} (id {qid!r})"
        answers = record.get("answers") or []
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise InputError(f"{where}: field 'answers' must be a list of strings")
        columns["qid"].append(qid)
        columns["lang"].append(require(record, "lang", where))
        columns["text"].append(require_text(record, "question", where))
        columns["answers"].append(answers)
    table = build_table("queries", columns)
    check_table(table, "queries", url)
    return table


def read_passages(url: str, lang: str) -> pa.Table:
    table = pa.concat_tables(iter_passage_blocks(url, lang))
    check_table(table, "passages", url)
    return table


def iter_passage_blocks(url: str, lang: str, block_rows: int = _BATCH_ROWS) -> Iterator[pa.Table]:
    """The passages in Arrow blocks of at most `block_rows`, each checked (errors count rows
    from the file's start); ids are unique within a block, across blocks the caller checks."""
    fmt = file_format(url)
    if fmt not in ("tsv", "jsonl"):
        raise InputError(f"{url}: XOR-TyDi passages must be TSV or JSONL, not {fmt}")
    rows = _tsv_passages(url) if fmt == "tsv" else _jsonl_passages(url)
    columns: dict[str, list[str]] = {"pid": [], "title": [], "text": []}
    first = 0
    for pid, title, text in rows:
        columns["pid"].append(pid)
        columns["title"].append(title)
        columns["text"].append(text)
        if len(columns["pid"]) >= block_rows:
            block = _passage_batch(columns, lang)
            check_table(block, "passages", url, first_row=first)
            first += block.num_rows
            yield block
            columns = {name: [] for name in columns}
    if columns["pid"] or first == 0:
        block = _passage_batch(columns, lang)
        check_table(block, "passages", url, first_row=first)
        yield block


def _passage_batch(columns: dict[str, list[str]], lang: str) -> pa.Table:
    return build_table("passages", {**columns, "lang": [lang] * len(columns["pid"])})


def _tsv_passages(url: str) -> Iterator[tuple[str, str, str]]:
    rows = iter_tsv(url)
    header = next(rows, None)
    if header is None:
        raise InputError(f"{url}: empty file, expected a header line naming {PASSAGE_COLUMNS}")
    _, names = header
    names = [name.strip().lower() for name in names]
    missing = [column for column in PASSAGE_COLUMNS if column not in names]
    if missing:
        raise InputError(
            f"{url}: line 1 must be a header naming the columns {list(PASSAGE_COLUMNS)} "
            f"(tab separated, any order); missing {missing} in {names}"
        )
    position = {column: names.index(column) for column in PASSAGE_COLUMNS}
    for number, fields in rows:
        if len(fields) != len(names):
            raise InputError(
                f"{url}: line {number}: {len(fields)} tab-separated fields, header has {len(names)}"
            )
        pid, text, title = (fields[position[column]] for column in PASSAGE_COLUMNS)
        if not text.strip():
            raise InputError(f"{url}: line {number} (id {pid!r}): field 'text' is empty")
        yield pid, title, text


def _jsonl_passages(url: str) -> Iterator[tuple[str, str, str]]:
    for number, record in iter_jsonl(url):
        where = f"{url}: line {number}"
        pid = require_id(record, "id", where)
        text = require(record, "text", where)
        if not text.strip():
            raise InputError(f"{where} (id {pid!r}): field 'text' is empty")
        yield pid, require(record, "title", where), text
