"""Generic (Parquet/JSONL + TREC qrels) and XOR-TyDi (JSONL + DPR TSV) adapters on small files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xqg_ray import schema
from xqg_ray.datasets import load_generic, load_xor_tydi
from xqg_ray.errors import ConfigError, InputError, StorageError

PASSAGES = [
    {"pid": "d1", "title": "Cats", "text": "Cats purr.", "lang": "en"},
    {"pid": "d2", "title": "Hunde", "text": "Hunde bellen.", "lang": "de"},
    {"pid": "d3", "title": "", "text": "Ein dritter Text über Katzen.", "lang": "de"},
]
QUERIES = [
    {"qid": "q1", "text": "Do cats purr?", "lang": "en", "answers": ["yes"]},
    {"qid": "q2", "text": "Bellen Hunde?", "lang": "de", "answers": ["ja"]},
]
QRELS = "q1 0 d1 1\n\nq2 0 d2 2\nq2\t0\td3\t0\n"


def write_jsonl(path: Path, rows: list[dict], opener=open) -> str:
    with opener(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return str(path)


def write_parquet(path: Path, rows: list[dict]) -> str:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def rows_of(table: pa.Table, columns: list[str]) -> list[dict]:
    return table.select(columns).to_pylist()


# ---------------------------------------------------------------- generic round trips


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "jsonl.gz"])
def test_generic_round_trip(tmp_path, fmt):
    if fmt == "parquet":
        passages = write_parquet(tmp_path / "p.parquet", PASSAGES)
        queries = write_parquet(tmp_path / "q.parquet", QUERIES)
    elif fmt == "jsonl":
        passages = write_jsonl(tmp_path / "p.jsonl", PASSAGES)
        queries = write_jsonl(tmp_path / "q.jsonl", QUERIES)
    else:
        passages = write_jsonl(tmp_path / "p.jsonl.gz", PASSAGES, gzip.open)
        queries = write_jsonl(tmp_path / "q.jsonl.gz", QUERIES, gzip.open)
    (tmp_path / "qrels.txt").write_text(QRELS)
    corpus = load_generic(passages, queries, str(tmp_path / "qrels.txt"), name="mine")
    assert corpus.name == "mine"
    assert rows_of(corpus.passages, ["pid", "title", "text", "lang"]) == PASSAGES
    assert rows_of(corpus.queries, ["qid", "text", "lang", "answers"]) == QUERIES
    assert corpus.passages.schema.names[:4] == schema.PASSAGES.names
    assert corpus.qrels.schema.equals(schema.QRELS)
    assert corpus.qrels.to_pylist() == [
        {"qid": "q1", "pid": "d1", "relevance": 1},
        {"qid": "q2", "pid": "d2", "relevance": 2},
        {"qid": "q2", "pid": "d3", "relevance": 0},
    ]


def test_generic_defaults_and_integer_ids(tmp_path):
    passages = write_jsonl(tmp_path / "p.jsonl", [{"pid": 7, "text": "Seven."}])
    corpus = load_generic(passages)
    assert corpus.passages.to_pylist() == [
        {"pid": "7", "lang": "und", "title": "", "text": "Seven."}
    ]
    assert corpus.queries.num_rows == 0 and corpus.qrels.num_rows == 0
    parquet = write_parquet(tmp_path / "p.parquet", [{"pid": 8, "text": "Eight.", "extra": 1}])
    table = load_generic(parquet).passages
    assert table.schema.equals(schema.PASSAGES)
    assert table["pid"].to_pylist() == ["8"]


def test_generic_reads_s3(tmp_path, s3_bucket):
    fs = fsspec.filesystem("s3")
    fs.pipe(f"{s3_bucket}/in/p.jsonl", "".join(json.dumps(p) + "\n" for p in PASSAGES).encode())
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(QUERIES), buffer)
    fs.pipe(f"{s3_bucket}/in/q.parquet", buffer.getvalue().to_pybytes())
    fs.pipe(f"{s3_bucket}/in/qrels.txt", QRELS.encode())
    corpus = load_generic(
        f"{s3_bucket}/in/p.jsonl", f"{s3_bucket}/in/q.parquet", f"{s3_bucket}/in/qrels.txt"
    )
    assert corpus.passages["pid"].to_pylist() == ["d1", "d2", "d3"]
    assert corpus.qrels.num_rows == 3


# ---------------------------------------------------------------- generic errors


def test_malformed_jsonl_names_file_line_and_column(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"pid": "a", "text": "A"}\n{"pid": "b" "text": "B"}\n')
    with pytest.raises(InputError) as err:
        load_generic(str(path))
    assert str(path) in str(err.value) and "line 2 column 13" in str(err.value)


def test_missing_field_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"pid": "a", "text": "A"}, {"pid": "b"}])
    with pytest.raises(InputError) as err:
        load_generic(path)
    assert path in str(err.value) and "line 2" in str(err.value) and "'text'" in str(err.value)


def test_empty_passage_and_question_name_file_and_id(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"pid": "a", "text": "A"}, {"pid": "b", "text": " "}])
    with pytest.raises(InputError) as err:
        load_generic(path)
    assert path in str(err.value) and "'b'" in str(err.value) and "empty" in str(err.value)
    passages = write_jsonl(tmp_path / "ok.jsonl", [{"pid": "a", "text": "A"}])
    queries = write_parquet(
        tmp_path / "q.parquet", [{"qid": "q1", "text": "Q"}, {"qid": "q2", "text": ""}]
    )
    with pytest.raises(InputError) as err:
        load_generic(passages, queries)
    assert queries in str(err.value) and "'q2'" in str(err.value) and "empty" in str(err.value)


def test_invalid_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "p.jsonl"
    first = b'{"pid": "a", "text": "A"}\n'
    path.write_bytes(first + b'{"pid": "b", "text": "\xc3\x28"}\n')
    with pytest.raises(InputError) as err:
        load_generic(str(path))
    expected_byte = len(first) + len(b'{"pid": "b", "text": "')
    assert str(path) in str(err.value) and "line 2" in str(err.value)
    assert f"byte {expected_byte}" in str(err.value)


def test_nonexistent_path_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError) as err:
        load_generic(str(tmp_path / "missing.parquet"))
    assert "missing.parquet" in str(err.value)


def test_duplicate_ids_name_file_and_rows(tmp_path):
    rows = [{"pid": "a", "text": "A"}, {"pid": "b", "text": "B"}, {"pid": "a", "text": "C"}]
    path = write_parquet(tmp_path / "p.parquet", rows)
    with pytest.raises(InputError) as err:
        load_generic(path)
    assert path in str(err.value) and "row 2" in str(err.value) and "row 0" in str(err.value)


def test_parquet_missing_column_and_null_field(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", [{"pid": "a", "body": "A"}])
    with pytest.raises(InputError) as err:
        load_generic(path)
    assert path in str(err.value) and "'text'" in str(err.value)
    path = write_parquet(
        tmp_path / "n.parquet", [{"pid": "a", "text": "A"}, {"pid": None, "text": "B"}]
    )
    with pytest.raises(InputError) as err:
        load_generic(path)
    assert path in str(err.value) and "row 1" in str(err.value) and "'pid'" in str(err.value)


def test_not_parquet_and_unknown_extension(tmp_path):
    fake = tmp_path / "p.parquet"
    fake.write_text("not parquet")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        load_generic(str(fake))
    with pytest.raises(InputError, match="unknown file format"):
        load_generic(str(tmp_path / "p.csv"))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("q1 0 d1", "3 fields"),
        ("q1 0 d1 high", "'relevance'"),
        ("q9 0 d1 1", "'q9'"),
        ("q1 0 d9 1", "'d9'"),
    ],
)
def test_bad_qrels_lines_name_file_and_line(tmp_path, line, expected):
    passages = write_jsonl(tmp_path / "p.jsonl", PASSAGES)
    queries = write_jsonl(tmp_path / "q.jsonl", QUERIES)
    qrels = tmp_path / "qrels.txt"
    qrels.write_text(f"q1 0 d1 1\n{line}\n")
    with pytest.raises(InputError) as err:
        load_generic(passages, queries, str(qrels))
    assert str(qrels) in str(err.value) and "line 2" in str(err.value)
    assert expected in str(err.value)


def test_qrels_without_queries_is_a_config_error(tmp_path):
    passages = write_jsonl(tmp_path / "p.jsonl", PASSAGES)
    (tmp_path / "qrels.txt").write_text(QRELS)
    with pytest.raises(ConfigError):
        load_generic(passages, None, str(tmp_path / "qrels.txt"))


# ---------------------------------------------------------------- XOR-TyDi

XOR_QUERIES = [
    {"id": "-100", "question": "ジョン・レノンは誰ですか？", "lang": "ja", "answers": ["musician"]},
    {"id": "7", "question": "Кто такой Гагарин?", "lang": "ru", "answers": ["cosmonaut", "pilot"]},
]
# DPR's psgs_w100.tsv quotes text with CSV rules: embedded quotes are doubled.
TSV = 'text\tid\ttitle\n"He said ""hi"" to\tthem."\t1\tGreeting\nPlain text here.\t2\tPlain\n'


def test_xor_tydi_jsonl_queries_and_tsv_passages(tmp_path):
    queries = write_jsonl(tmp_path / "dev.jsonl", XOR_QUERIES)
    (tmp_path / "psgs.tsv").write_text(TSV, encoding="utf-8")
    corpus = load_xor_tydi(queries, str(tmp_path / "psgs.tsv"))
    assert corpus.passages.to_pylist() == [
        {"pid": "1", "lang": "en", "title": "Greeting", "text": 'He said "hi" to\tthem.'},
        {"pid": "2", "lang": "en", "title": "Plain", "text": "Plain text here."},
    ]
    assert corpus.queries.to_pylist() == [
        {"qid": q["id"], "lang": q["lang"], "text": q["question"], "answers": q["answers"]}
        for q in XOR_QUERIES
    ]
    assert corpus.qrels.num_rows == 0 and corpus.qrels.schema.equals(schema.QRELS)


def test_xor_tydi_jsonl_passages_and_queries_without_answers(tmp_path):
    queries = write_jsonl(tmp_path / "test.jsonl", [{"id": "1", "question": "Q?", "lang": "fi"}])
    passages = write_jsonl(tmp_path / "p.jsonl", [{"id": 3, "title": "T", "text": "Body."}])
    corpus = load_xor_tydi(queries, passages)
    assert corpus.passages.to_pylist() == [
        {"pid": "3", "lang": "en", "title": "T", "text": "Body."}
    ]
    assert corpus.queries["answers"].to_pylist() == [[]]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("1\tSome text\tTitle\n", "header"),
        ("id\ttext\ttitle\n1\tSome text\n", "line 2"),
        ("id\ttext\ttitle\n1\tOk\tT\n2\t \tT\n", "'2'"),
        ("", "empty file"),
    ],
)
def test_xor_tydi_bad_tsv_names_file_and_line(tmp_path, content, expected):
    queries = write_jsonl(tmp_path / "dev.jsonl", XOR_QUERIES)
    path = tmp_path / "psgs.tsv"
    path.write_text(content)
    with pytest.raises(InputError) as err:
        load_xor_tydi(queries, str(path))
    assert str(path) in str(err.value) and expected in str(err.value)


def test_xor_tydi_query_errors(tmp_path):
    (tmp_path / "psgs.tsv").write_text(TSV)
    missing_lang = write_jsonl(tmp_path / "a.jsonl", [{"id": "1", "question": "Q?"}])
    with pytest.raises(InputError) as err:
        load_xor_tydi(missing_lang, str(tmp_path / "psgs.tsv"))
    assert (
        missing_lang in str(err.value) and "line 1" in str(err.value) and "'lang'" in str(err.value)
    )
    bad_answers = write_jsonl(
        tmp_path / "b.jsonl", [{"id": "1", "question": "Q?", "lang": "ar", "answers": "x"}]
    )
    with pytest.raises(InputError, match="'answers' must be a list of strings"):
        load_xor_tydi(bad_answers, str(tmp_path / "psgs.tsv"))
    with pytest.raises(StorageError):
        load_xor_tydi(str(tmp_path / "none.jsonl"), str(tmp_path / "psgs.tsv"))
