"""Property tests over every reader of user input: each fuzzed file or config either loads or
fails with an XqgError subclass that says what is wrong; never another exception, a hang, or a
file left behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xqg_ray.config import RunConfig, load_config
from xqg_ray.datasets import Corpus, load_generic, load_xor_tydi, load_xquad
from xqg_ray.errors import XqgError

FUZZ = settings(
    max_examples=100,
    deadline=None,  # no timing assertion in tests: a hang still fails through pytest-timeout
    suppress_health_check=[HealthCheck.too_slow],
)

scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
field_values = st.one_of(
    st.text(max_size=12), st.integers(-3, 3), st.none(), st.booleans(), json_values
)


def records(fields: list[str]) -> st.SearchStrategy[dict]:
    """Objects that mostly have the expected fields, with any type of value, plus noise."""
    return st.fixed_dictionaries(
        {},
        optional={name: field_values for name in fields}
        | {"extra": json_values, "lang": st.sampled_from(["en", "de", "", "xx-long"])},
    )


def jsonl_lines(fields: list[str]) -> st.SearchStrategy[list[str]]:
    """JSONL lines: objects, other JSON values, blank lines, or broken text."""
    line = st.one_of(
        records(fields).map(json.dumps),
        records(fields).map(json.dumps),
        json_values.map(json.dumps),
        st.text(max_size=20).filter(lambda text: "\n" not in text and "\r" not in text),
        st.just(""),
    )
    return st.lists(line, max_size=6)


raw_bytes = st.binary(max_size=64)


def assert_loads_or_clear_error(load, folder: Path) -> None:
    before = sorted(os.listdir(folder))
    try:
        result = load()
    except XqgError as exc:
        assert str(exc), "an error must say what is wrong"
    else:
        assert isinstance(result, (Corpus, RunConfig))
    assert sorted(os.listdir(folder)) == before, "a reader must not write files"


def write_lines(path: Path, lines: list[str] | bytes) -> str:
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("\n".join(lines), encoding="utf-8")
    return str(path)


@FUZZ
@given(
    passages=jsonl_lines(["pid", "title", "text"]) | raw_bytes,
    queries=jsonl_lines(["qid", "text", "answers"]) | raw_bytes,
    qrels=st.lists(
        st.lists(
            st.sampled_from(["q1", "p1", "0", "1", "2", "-1", "x", "Q0", "1.5", ""]), max_size=5
        ).map(" ".join),
        max_size=5,
    ),
)
def test_generic_jsonl_and_trec_qrels(passages, queries, qrels):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        urls = (
            write_lines(folder / "passages.jsonl", passages),
            write_lines(folder / "queries.jsonl", queries),
            write_lines(folder / "qrels.txt", qrels),
        )
        assert_loads_or_clear_error(lambda: load_generic(*urls), folder)


parquet_columns = st.dictionaries(
    st.sampled_from(["pid", "title", "text", "lang", "other"]),
    st.one_of(
        st.lists(st.text(max_size=6), min_size=2, max_size=2),
        st.lists(st.integers(-3, 3), min_size=2, max_size=2),
        st.lists(st.none() | st.text(max_size=4), min_size=2, max_size=2),
        st.lists(st.floats(allow_nan=True), min_size=2, max_size=2),
        st.lists(st.lists(st.integers(0, 2), max_size=2), min_size=2, max_size=2),
    ),
)


@FUZZ
@given(columns=parquet_columns, corrupt=st.none() | st.integers(0, 200))
def test_generic_parquet(columns, corrupt):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "passages.parquet"
        pq.write_table(pa.table(columns) if columns else pa.table({"x": [1]}), path)
        if corrupt is not None:  # flip one byte: a damaged file must be an InputError
            data = bytearray(path.read_bytes())
            data[corrupt % len(data)] ^= 0xFF
            path.write_bytes(bytes(data))
        assert_loads_or_clear_error(lambda: load_generic(str(path)), folder)


def squad_documents() -> st.SearchStrategy:
    answer = st.fixed_dictionaries(
        {"text": field_values, "answer_start": st.integers(-2, 40) | field_values}
    )
    qa = st.fixed_dictionaries(
        {"id": field_values, "question": field_values, "answers": st.lists(answer, max_size=2)}
    )
    paragraph = st.fixed_dictionaries(
        {"context": st.text(max_size=30) | field_values, "qas": st.lists(qa, max_size=2)}
    )
    article = st.fixed_dictionaries(
        {"title": field_values, "paragraphs": st.lists(paragraph, max_size=2) | field_values}
    )
    return st.one_of(
        st.fixed_dictionaries({"data": st.lists(article, max_size=2)}),
        st.fixed_dictionaries({"data": json_values}),
        json_values,
    )


@FUZZ
@given(en=squad_documents(), de=squad_documents() | st.none(), broken=st.booleans())
def test_xquad_shaped_json(en, de, broken):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        text = json.dumps(en)
        (folder / "xquad.en.json").write_text(text[: len(text) // 2] if broken else text)
        languages = ["en"]
        if de is not None:
            (folder / "xquad.de.json").write_text(json.dumps(de))
            languages.append("de")
        assert_loads_or_clear_error(lambda: load_xquad(str(folder), languages), folder)


tsv_cell = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)


@FUZZ
@given(
    queries=jsonl_lines(["id", "question", "lang", "answers"]) | raw_bytes,
    header=st.permutations(["id", "text", "title"]) | st.lists(tsv_cell, max_size=3),
    rows=st.lists(st.lists(tsv_cell, max_size=4), max_size=5),
    as_jsonl=st.booleans(),
)
def test_xor_tydi_jsonl_and_tsv(queries, header, rows, as_jsonl):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        query_url = write_lines(folder / "dev.jsonl", queries)
        if as_jsonl:
            lines = [json.dumps(dict(zip(header, row, strict=False))) for row in rows]
            passage_url = write_lines(folder / "passages.jsonl", lines)
        else:
            lines = ["\t".join(header), *("\t".join(row) for row in rows)]
            passage_url = write_lines(folder / "passages.tsv", lines)
        assert_loads_or_clear_error(lambda: load_xor_tydi(query_url, passage_url), folder)


config_keys = st.sampled_from(
    [
        "root",
        "encoder.batch_size",
        "encoder.backend",
        "generator.languages",
        "index.shards",
        "index.factory",
        "stages.encode.num_cpus",
        "ray.enabled",
        "augment.alpha",
        "dataset.name",
        "nonsense",
        "root.inner",
        "",
    ]
)
override_values = st.one_of(
    st.integers(-2, 5).map(str),
    st.sampled_from(["true", "[a, b]", "{x: 1}", "", "null", "0.5", "[", "{", ":", "'"]),
    st.text(max_size=8),
)


@FUZZ
@given(
    document=st.one_of(
        st.dictionaries(config_keys, json_values, max_size=4).map(yaml.safe_dump),
        st.fixed_dictionaries({"root": st.text(max_size=5)}, optional={"index": json_values}).map(
            yaml.safe_dump
        ),
        st.text(max_size=40),
    ),
    overrides=st.lists(
        st.tuples(config_keys, override_values).map("=".join) | st.text(max_size=10), max_size=3
    ),
)
def test_config_loader(document, overrides):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "run.yaml"
        path.write_text(document, encoding="utf-8")
        assert_loads_or_clear_error(lambda: load_config(str(path), overrides), folder)
