"""XQuAD and XQuAD-R adapters on the shipped files, and their errors on small broken copies."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pyarrow.compute as pc
import pytest

from xqg_ray import schema
from xqg_ray.datasets import load_xquad, load_xquad_r
from xqg_ray.errors import InputError, StorageError


@pytest.fixture(scope="module")
def xquad_dir(shared_data: Path) -> Path:
    return shared_data / "xquad"


@pytest.fixture(scope="module")
def xquad_r_dir(shared_data: Path) -> Path:
    return shared_data / "xquad-r"


@pytest.fixture(scope="module")
def xquad(xquad_dir):
    return load_xquad(str(xquad_dir))


@pytest.fixture(scope="module")
def xquad_r(xquad_r_dir):
    return load_xquad_r(str(xquad_r_dir))


def column_pairs(table, first: str, second: str) -> list[tuple]:
    return list(zip(table[first].to_pylist(), table[second].to_pylist(), strict=True))


def raw(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text(encoding="utf-8"))


def shipped_languages(folder: Path, prefix: str) -> set[str]:
    return {p.name[len(prefix) :].removesuffix(".json") for p in folder.glob(f"{prefix}*.json")}


# ---------------------------------------------------------------- XQuAD on the shipped data


def test_xquad_has_every_shipped_language_with_full_counts(xquad, xquad_dir):
    languages = shipped_languages(xquad_dir, "xquad.")
    assert len(languages) == 11
    assert set(xquad.languages) == languages
    assert collections.Counter(xquad.passages["lang"].to_pylist()) == {
        lang: 240 for lang in languages
    }
    assert collections.Counter(xquad.queries["lang"].to_pylist()) == {
        lang: 1190 for lang in languages
    }
    assert xquad.qrels.num_rows == 1190 * 11 * 11
    assert set(xquad.qrels["relevance"].to_pylist()) == {1}


def test_xquad_tables_start_with_the_schema_columns(xquad):
    for table, base in ((xquad.passages, schema.PASSAGES), (xquad.queries, schema.QUERIES)):
        assert table.schema.names[: len(base)] == base.names
        for field in base:
            assert table.schema.field(field.name).type == field.type
    assert xquad.qrels.schema.equals(schema.QRELS)
    assert xquad.queries.schema.field("answers").type.value_type == schema.QUERIES.field("qid").type


def test_xquad_ids_are_stable_across_loads(xquad, xquad_dir):
    again = load_xquad(str(xquad_dir))
    assert again.passages.equals(xquad.passages)
    assert again.queries.equals(xquad.queries)
    assert again.qrels.equals(xquad.qrels)


def test_xquad_passage_ids_follow_article_and_paragraph_position(xquad, xquad_dir):
    data = raw(xquad_dir, "xquad.de.json")["data"]
    article, paragraph = data[3], data[3]["paragraphs"][2]
    row = xquad.passages.filter(pc.equal(xquad.passages["pid"], "de-p0003-02")).to_pylist()
    assert len(row) == 1
    assert row[0]["text"] == paragraph["context"].strip()
    assert row[0]["group"] == "p0003-02"
    assert row[0]["title"] == article["title"].replace("_", " ")
    assert "_" not in row[0]["title"] and " " in row[0]["title"]


def test_xquad_question_is_relevant_to_its_paragraph_in_every_language(xquad, xquad_dir):
    en = raw(xquad_dir, "xquad.en.json")["data"]
    question = en[5]["paragraphs"][1]["qas"][0]
    for lang in ("en", "th"):
        qid = f"{lang}-{question['id']}"
        rows = xquad.qrels.filter(pc.equal(xquad.qrels["qid"], qid))
        assert set(rows["pid"].to_pylist()) == {f"{x}-p0005-01" for x in xquad.languages}
    query = xquad.queries.filter(pc.equal(xquad.queries["qid"], f"en-{question['id']}")).to_pylist()
    assert query[0]["text"] == question["question"].strip()
    assert query[0]["answers"] == [a["text"] for a in question["answers"]]
    assert query[0]["group"] == question["id"]


def test_xquad_byte_order_marks_are_removed(xquad, xquad_dir):
    raw_th = (xquad_dir / "xquad.th.json").read_text(encoding="utf-8")
    assert "\\ufeff" in raw_th or "\ufeff" in raw_th  # the shipped file does contain them
    assert not any("\ufeff" in text for text in xquad.passages["text"].to_pylist())


def test_xquad_language_filter_and_unknown_language(xquad_dir):
    corpus = load_xquad(str(xquad_dir), ["en", "de"])
    assert set(corpus.languages) == {"en", "de"}
    assert corpus.passages.num_rows == 2 * 240
    assert corpus.qrels.num_rows == 1190 * 2 * 2
    with pytest.raises(InputError) as err:
        load_xquad(str(xquad_dir), ["en", "fr"])
    message = str(err.value)
    assert str(xquad_dir) in message and "'fr'" in message and "'zh'" in message


# ---------------------------------------------------------------- XQuAD-R on the shipped data


def test_xquad_r_pool_has_every_sentence_of_every_language(xquad_r, xquad_r_dir):
    languages = shipped_languages(xquad_r_dir, "")
    assert set(xquad_r.languages) == languages and len(languages) == 11
    for lang in languages:
        data = raw(xquad_r_dir, f"{lang}.json")["data"]
        expected = sum(len(p["sentences"]) for a in data for p in a["paragraphs"])
        assert pc.sum(pc.equal(xquad_r.passages["lang"], lang)).as_py() == expected
    assert xquad_r.queries.num_rows == 1190 * 11
    en = raw(xquad_r_dir, "en.json")["data"]
    first = xquad_r.passages.filter(pc.equal(xquad_r.passages["pid"], "en-p0000-00-s1")).to_pylist()
    assert first[0]["text"] == en[0]["paragraphs"][0]["sentences"][1]
    assert first[0]["context"] == en[0]["paragraphs"][0]["context"]
    assert first[0]["group"] == "p0000-00"


def test_xquad_r_every_question_has_one_relevant_sentence_per_language(xquad_r):
    pids_per_query = collections.defaultdict(list)
    for qid, pid in column_pairs(xquad_r.qrels, "qid", "pid"):
        pids_per_query[qid].append(pid.split("-", 1)[0])
    assert len(pids_per_query) == 1190 * 11
    languages = sorted(xquad_r.languages)
    assert all(sorted(langs) == languages for langs in pids_per_query.values())


def test_xquad_r_relevant_sentence_holds_the_answer_start(xquad_r, xquad_r_dir):
    """LAReQA convention: the sentence whose [start, end) break contains the answer start."""
    relevant = set(column_pairs(xquad_r.qrels, "qid", "pid"))
    abutting = 0
    for lang in ("en", "zh", "hi"):
        for a, article in enumerate(raw(xquad_r_dir, f"{lang}.json")["data"]):
            for n, paragraph in enumerate(article["paragraphs"]):
                breaks = paragraph["sentence_breaks"]
                for qa in paragraph["qas"]:
                    start = qa["answers"][0]["answer_start"]
                    inside = [i for i, (s, e) in enumerate(breaks) if s <= start < e]
                    assert len(inside) == 1
                    abutting += any(start == e for _, e in breaks)
                    pid = f"{lang}-p{a:04d}-{n:02d}-s{inside[0]}"
                    assert (f"ar-{qa['id']}", pid) in relevant
    assert abutting > 0  # answers that start right at a break end exist, so the rule matters


def test_xquad_r_relevant_sentences_contain_the_answer_text(xquad_r):
    text = dict(column_pairs(xquad_r.passages, "pid", "text"))
    answers = dict(column_pairs(xquad_r.queries, "qid", "answers"))
    same_language = [
        (q, p)
        for q, p in column_pairs(xquad_r.qrels, "qid", "pid")
        if q.split("-", 1)[0] == p.split("-", 1)[0]
    ]
    assert len(same_language) == 1190 * 11
    contained = sum(answers[q][0] in text[p] for q, p in same_language)
    assert contained / len(same_language) > 0.98  # the rest span a sentence boundary


# ---------------------------------------------------------------- errors on small files


def paragraph(context: str, qas: list[dict], **extra) -> dict:
    return {"context": context, "qas": qas, **extra}


def qa(qid: str, question: str, answer: str = "x", start: int = 0) -> dict:
    return {"id": qid, "question": question, "answers": [{"text": answer, "answer_start": start}]}


def write_squad(folder: Path, name: str, articles: list[list[dict]]) -> Path:
    data = {"data": [{"title": f"T_{i}", "paragraphs": ps} for i, ps in enumerate(articles)]}
    path = folder / name
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def small_pair(tmp_path: Path) -> None:
    write_squad(tmp_path, "xquad.en.json", [[paragraph("Alpha beta.", [qa("q1", "What?")])]])
    write_squad(tmp_path, "xquad.de.json", [[paragraph("Alpha Beta.", [qa("q1", "Was?")])]])


def test_small_parallel_files_load(tmp_path):
    small_pair(tmp_path)
    corpus = load_xquad(str(tmp_path))
    assert sorted(corpus.passages["pid"].to_pylist()) == ["de-p0000-00", "en-p0000-00"]
    assert sorted(corpus.queries["qid"].to_pylist()) == ["de-q1", "en-q1"]
    assert corpus.qrels.num_rows == 4
    assert corpus.passages["title"].to_pylist() == ["T 0", "T 0"]


def test_paragraph_count_mismatch_names_file_and_article(tmp_path):
    small_pair(tmp_path)
    two = [paragraph("A.", [qa("q1", "What?")]), paragraph("B.", [qa("q2", "Who?")])]
    path = write_squad(tmp_path, "xquad.en.json", [two])
    with pytest.raises(InputError) as err:
        load_xquad(str(tmp_path))
    assert "xquad.de.json" in str(err.value) or str(path) in str(err.value)
    assert "data[0]" in str(err.value) and "paragraphs" in str(err.value)


def test_question_id_mismatch_names_file_and_paragraph(tmp_path):
    small_pair(tmp_path)
    path = write_squad(tmp_path, "xquad.en.json", [[paragraph("A.", [qa("q9", "What?")])]])
    with pytest.raises(InputError) as err:
        load_xquad(str(tmp_path))
    message = str(err.value)
    assert "p0000-00" in message and "q1" in message and "q9" in message
    assert str(path) in message or str(tmp_path / "xquad.de.json") in message


def test_malformed_json_names_file_line_and_column(tmp_path):
    small_pair(tmp_path)
    path = tmp_path / "xquad.de.json"
    path.write_text('{"data": [\n  {"title": "x",, }\n]}', encoding="utf-8")
    with pytest.raises(InputError) as err:
        load_xquad(str(tmp_path))
    assert str(path) in str(err.value) and "line 2" in str(err.value) and "column" in str(err.value)


def test_invalid_utf8_names_file_and_byte_offset(tmp_path):
    small_pair(tmp_path)
    path = tmp_path / "xquad.de.json"
    good = path.read_bytes()
    path.write_bytes(good[:20] + b"\xff\xfe" + good[20:])
    with pytest.raises(InputError) as err:
        load_xquad(str(tmp_path))
    assert str(path) in str(err.value) and "byte 20" in str(err.value)


def test_missing_field_names_file_position_and_field(tmp_path):
    small_pair(tmp_path)
    broken = {"id": "q1", "answers": []}
    path = write_squad(tmp_path, "xquad.de.json", [[paragraph("A.", [broken])]])
    with pytest.raises(InputError) as err:
        load_xquad(str(tmp_path))
    message = str(err.value)
    assert str(path) in message and "qas[0]" in message and "'question'" in message


@pytest.mark.parametrize(
    ("context", "question", "expected"),
    [("  ", "What?", "'context'"), ("Alpha.", " \ufeff ", "'question'")],
)
def test_empty_text_names_file_and_id(tmp_path, context, question, expected):
    small_pair(tmp_path)
    path = write_squad(tmp_path, "xquad.de.json", [[paragraph(context, [qa("q1", question)])]])
    with pytest.raises(InputError) as err:
        load_xquad(str(tmp_path))
    message = str(err.value)
    assert str(path) in message and expected in message and "empty" in message
    assert "p0000-00" in message or "q1" in message


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(StorageError) as err:
        load_xquad(str(tmp_path / "nowhere"))
    assert "nowhere" in str(err.value)
    with pytest.raises(StorageError) as err:
        load_xquad(str(tmp_path))
    assert str(tmp_path) in str(err.value) and "xquad.<lang>.json" in str(err.value)


def sentence_paragraph(context: str, breaks: list[list[int]], qas: list[dict]) -> dict:
    sentences = [context[s:e] for s, e in breaks]
    return paragraph(context, qas, sentences=sentences, sentence_breaks=breaks)


def test_xquad_r_small_pool(tmp_path):
    en = "One two. Three four."
    de = "Eins zwei. Drei vier."
    write_squad(
        tmp_path,
        "en.json",
        [[sentence_paragraph(en, [[0, 8], [9, 20]], [qa("q", "?", "Three", 9)])]],
    )
    write_squad(
        tmp_path,
        "de.json",
        [[sentence_paragraph(de, [[0, 10], [10, 21]], [qa("q", "?", "Drei", 11)])]],
    )
    corpus = load_xquad_r(str(tmp_path))
    assert sorted(corpus.passages["pid"].to_pylist()) == [
        "de-p0000-00-s0",
        "de-p0000-00-s1",
        "en-p0000-00-s0",
        "en-p0000-00-s1",
    ]
    pairs = set(column_pairs(corpus.qrels, "qid", "pid"))
    assert pairs == {
        ("en-q", "en-p0000-00-s1"), ("en-q", "de-p0000-00-s1"),
        ("de-q", "en-p0000-00-s1"), ("de-q", "de-p0000-00-s1"),
    }  # fmt: skip


def test_xquad_r_answer_start_at_a_break_end_belongs_to_the_next_sentence(tmp_path):
    text = "甲乙。丙丁。"
    write_squad(
        tmp_path, "zh.json", [[sentence_paragraph(text, [[0, 3], [3, 6]], [qa("q", "?", "丙", 3)])]]
    )
    corpus = load_xquad_r(str(tmp_path))
    assert corpus.qrels["pid"].to_pylist() == ["zh-p0000-00-s1"]


def test_xquad_r_bad_sentence_data_names_the_paragraph(tmp_path):
    text = "One two. Three four."
    good = sentence_paragraph(text, [[0, 8], [9, 20]], [qa("q", "?", "x", 30)])
    write_squad(tmp_path, "en.json", [[good]])
    with pytest.raises(InputError) as err:
        load_xquad_r(str(tmp_path))
    assert "answer_start 30" in str(err.value) and "p0000-00" in str(err.value)
    good["sentences"] = good["sentences"][:1]
    write_squad(tmp_path, "en.json", [[good]])
    with pytest.raises(InputError) as err:
        load_xquad_r(str(tmp_path))
    assert "1 sentences but 2 sentence_breaks" in str(err.value) and "en.json" in str(err.value)
