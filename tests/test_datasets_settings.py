"""Corpus validation, cross-lingual settings and selection, and `load_corpus` from a config."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from xqg_ray.config import DatasetConfig
from xqg_ray.datasets import Corpus, load_corpus, load_xquad, parse_setting, select
from xqg_ray.datasets.corpus import build_table
from xqg_ray.errors import ConfigError, InputError

LANGS = ["ar", "de", "en", "th"]


def tiny_corpus(qrels: list[tuple[str, str]] | None = None) -> Corpus:
    """Two parallel paragraphs in en and de, one question each in en and de."""
    passages = build_table(
        "passages",
        {
            "pid": ["en-a", "en-b", "de-a", "de-b"],
            "lang": ["en", "en", "de", "de"],
            "title": ["A", "B", "A", "B"],
            "text": ["Alpha.", "Beta.", "Alpha (de).", "Beta (de)."],
            "group": ["a", "b", "a", "b"],
        },
    )
    queries = build_table(
        "queries", {"qid": ["en-q", "de-q"], "lang": ["en", "de"], "text": ["Q?", "F?"]}
    )
    pairs = qrels if qrels is not None else [("en-q", "en-a"), ("en-q", "de-a"), ("de-q", "de-a")]
    qrels_table = build_table(
        "qrels",
        {"qid": [q for q, _ in pairs], "pid": [p for _, p in pairs], "relevance": [1] * len(pairs)},
    )
    return Corpus(passages, queries, qrels_table, "tiny").validate()


# ---------------------------------------------------------------- Corpus.validate


def test_validate_reports_duplicate_ids_with_table_row_and_field():
    corpus = tiny_corpus()
    doubled = pa.concat_tables([corpus.passages, corpus.passages.slice(1, 1)])
    with pytest.raises(InputError) as err:
        Corpus(doubled, corpus.queries, corpus.qrels, "tiny").validate()
    message = str(err.value)
    assert "passages" in message and "row 4" in message and "pid" in message and "'en-b'" in message


def test_validate_reports_empty_text_and_unknown_qrels_ids():
    corpus = tiny_corpus()
    queries = corpus.queries.set_column(2, "text", pa.array(["Q?", "   "]))
    with pytest.raises(InputError) as err:
        Corpus(corpus.passages, queries, corpus.qrels, "tiny").validate()
    assert "queries" in str(err.value) and "row 1" in str(err.value) and "'de-q'" in str(err.value)
    with pytest.raises(InputError) as err:
        tiny_corpus([("en-q", "en-zzz")])
    message = str(err.value)
    assert "qrels" in message and "row 0" in message and "'pid'" in message and "en-zzz" in message


def test_validate_rejects_base_columns_out_of_order():
    corpus = tiny_corpus()
    swapped = corpus.passages.select(["lang", "pid", "title", "text"])
    with pytest.raises(InputError, match="column 0 must be 'pid'"):
        Corpus(swapped, corpus.queries, corpus.qrels, "tiny").validate()


# ---------------------------------------------------------------- settings


def test_named_settings_expand_over_the_languages():
    assert parse_setting("x-en", LANGS).pairs == tuple((lang, ("en",)) for lang in LANGS)
    assert parse_setting("x-th", LANGS).pairs == tuple((lang, ("th",)) for lang in LANGS)
    assert parse_setting("x-x", LANGS).pairs == tuple((lang, (lang,)) for lang in LANGS)
    assert parse_setting("pool", LANGS).pairs == tuple((lang, tuple(LANGS)) for lang in LANGS)


def test_explicit_pairs_group_by_query_language():
    setting = parse_setting("ar-en,de-en,ar-th", LANGS)
    assert setting.name == "ar-en,de-en,ar-th"
    assert setting.pairs == (("ar", ("en", "th")), ("de", ("en",)))
    assert parse_setting("ar-en", LANGS).pairs == (("ar", ("en",)),)


@pytest.mark.parametrize("name", ["sideways", "ar_en", "ar-en,", ""])
def test_unknown_setting_lists_valid_forms(name):
    with pytest.raises(ConfigError) as err:
        parse_setting(name, LANGS)
    assert "x-x" in str(err.value) and "pool" in str(err.value) and "ar-en" in str(err.value)


@pytest.mark.parametrize("name", ["x-fr", "fr-en", "ar-fr"])
def test_setting_with_a_missing_language_is_rejected(name):
    with pytest.raises(ConfigError) as err:
        parse_setting(name, LANGS)
    assert "'fr'" in str(err.value)


def test_select_keeps_pool_and_the_qrels_inside_it():
    corpus = tiny_corpus()
    de_to_en = select(corpus, "de", ["en"])
    # de-q's only relevant passage is German, so it has nothing to find in an English pool
    assert de_to_en.queries.num_rows == 0 and de_to_en.qrels.num_rows == 0
    assert de_to_en.passages["pid"].to_pylist() == ["en-a", "en-b"]
    en_to_de = select(corpus, "en", ("de",))
    assert en_to_de.queries["qid"].to_pylist() == ["en-q"]
    assert en_to_de.qrels.to_pylist() == [{"qid": "en-q", "pid": "de-a", "relevance": 1}]
    pooled = select(corpus, "en", ("en", "de"))
    assert sorted(pooled.qrels["pid"].to_pylist()) == ["de-a", "en-a"]


def test_select_without_qrels_keeps_every_query_of_the_language():
    corpus = tiny_corpus([])
    chosen = select(corpus, "de", ("en",))
    assert chosen.queries["qid"].to_pylist() == ["de-q"]
    assert chosen.passages.num_rows == 2


def test_select_on_xquad_cross_lingual(shared_data):
    corpus = load_xquad(str(shared_data / "xquad"))
    ar_en = select(corpus, "ar", ("en",))
    assert ar_en.passages.num_rows == 240 and set(ar_en.passages["lang"].to_pylist()) == {"en"}
    assert ar_en.queries.num_rows == 1190 and set(ar_en.queries["lang"].to_pylist()) == {"ar"}
    assert ar_en.qrels.num_rows == 1190
    assert all(pid.startswith("en-") for pid in ar_en.qrels["pid"].to_pylist())
    for query_lang, passage_langs in parse_setting("pool", corpus.languages).pairs[:1]:
        pooled = select(corpus, query_lang, passage_langs)
        assert pooled.qrels.num_rows == 1190 * 11 and pooled.passages.num_rows == 240 * 11


# ---------------------------------------------------------------- load_corpus


def test_load_corpus_xquad_with_language_and_passage_cuts(shared_data):
    cfg = DatasetConfig(name="xquad", languages=["en", "de"], max_passages=3)
    corpus = load_corpus(cfg)
    raw = json.loads((shared_data / "xquad" / "xquad.en.json").read_text(encoding="utf-8"))
    first_paragraphs = raw["data"][0]["paragraphs"][:3]
    question_ids = {qa["id"] for p in first_paragraphs for qa in p["qas"]}
    assert sorted(corpus.passages["pid"].to_pylist()) == sorted(
        f"{lang}-p0000-{n:02d}" for lang in ("en", "de") for n in range(3)
    )
    assert set(corpus.queries["qid"].to_pylist()) == {
        f"{lang}-{qid}" for lang in ("en", "de") for qid in question_ids
    }
    assert corpus.qrels.num_rows == len(question_ids) * 2 * 2


def test_load_corpus_xquad_r_keeps_whole_paragraphs(shared_data):
    corpus = load_corpus(DatasetConfig(name="xquad_r", languages=["th"], max_passages=2))
    raw = json.loads((shared_data / "xquad-r" / "th.json").read_text(encoding="utf-8"))
    paragraphs = raw["data"][0]["paragraphs"][:2]
    assert corpus.passages.num_rows == sum(len(p["sentences"]) for p in paragraphs)
    assert corpus.queries.num_rows == sum(len(p["qas"]) for p in paragraphs)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_load_corpus_generic_and_xor_tydi(tmp_path):
    passages = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"pid": "1", "text": "One.", "lang": "en"},
            {"pid": "2", "text": "Zwei.", "lang": "de"},
            {"pid": "3", "text": "Three.", "lang": "en"},
        ],
    )
    queries = write_jsonl(
        tmp_path / "q.jsonl",
        [{"qid": "a", "text": "A?", "lang": "en"}, {"qid": "b", "text": "B?", "lang": "de"}],
    )
    (tmp_path / "qrels.txt").write_text("a 0 3 1\nb 0 2 1\n")
    cfg = DatasetConfig(
        name="generic",
        passages=passages,
        queries=queries,
        qrels=str(tmp_path / "qrels.txt"),
        languages=["en"],
        max_passages=2,
    )
    corpus = load_corpus(cfg)
    assert corpus.passages["pid"].to_pylist() == ["1", "3"]
    assert corpus.queries["qid"].to_pylist() == ["a"]
    with pytest.raises(ConfigError, match="'fr'"):
        load_corpus(cfg.model_copy(update={"languages": ["fr"]}))
    with pytest.raises(ConfigError, match="dataset.passages"):
        load_corpus(DatasetConfig(name="generic"))

    xor_queries = write_jsonl(
        tmp_path / "dev.jsonl",
        [
            {"id": "x1", "question": "س؟", "lang": "ar", "answers": ["a"]},
            {"id": "x2", "question": "質問？", "lang": "ja", "answers": ["b"]},
        ],
    )
    (tmp_path / "psgs.tsv").write_text("id\ttext\ttitle\n1\tOne.\tT1\n2\tTwo.\tT2\n3\tThree.\tT3\n")
    xor = DatasetConfig(
        name="xor_tydi",
        queries=xor_queries,
        passages=str(tmp_path / "psgs.tsv"),
        languages=["ja"],
        max_passages=2,
    )
    corpus = load_corpus(xor)
    assert corpus.passages["pid"].to_pylist() == ["1", "2"]  # English passages stay
    assert corpus.queries["qid"].to_pylist() == ["x2"]
    with pytest.raises(ConfigError, match="dataset.queries"):
        load_corpus(DatasetConfig(name="xor_tydi", passages=str(tmp_path / "psgs.tsv")))
