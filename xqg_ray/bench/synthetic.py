"""The synthetic corpora the benchmarks build, reproducibly.

`synthetic_corpus`: XQuAD sentences, so `pipeline_throughput` and the generation, encoding and
scaling sweeps measure the same real text and their figures compare. `scale_corpus`: millions of
pseudo-word passages written block by block, for the corpus-scale benchmark (`scale.py`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# Sentence ends in the XQuAD scripts (Latin, Cyrillic, Greek, Arabic, Devanagari, CJK); Thai
# has no sentence punctuation and separates sentences (and clauses) with a space.
_SENTENCE_END = re.compile(r"(?<=[.!?;\u0964\u06d4\u3002\uff01\uff1f])\s*")
_SENTENCE_SPLIT = {"th": re.compile(r"\s+")}
_MIN_SENTENCE_CHARS = 20


def sentence_pool(xquad_dir: str) -> dict[str, list[tuple[str, str]]]:
    """(article title, sentence) pairs of every XQuAD context, per language, in file order."""
    pool: dict[str, list[tuple[str, str]]] = {}
    for file in sorted(Path(xquad_dir).glob("xquad.*.json")):
        lang = file.name.split(".")[1]
        splitter = _SENTENCE_SPLIT.get(lang, _SENTENCE_END)
        sentences = pool.setdefault(lang, [])
        for article in json.loads(file.read_text(encoding="utf-8"))["data"]:
            title = article["title"].replace("_", " ")
            for paragraph in article["paragraphs"]:
                for sentence in splitter.split(paragraph["context"]):
                    if len(sentence.strip()) >= _MIN_SENTENCE_CHARS:
                        sentences.append((title, sentence.strip()))
    if not pool:
        raise FileNotFoundError(f"{xquad_dir}: no xquad.<lang>.json files")
    return pool


def english_questions(xquad_dir: str, count: int) -> list[str]:
    data = json.loads((Path(xquad_dir) / "xquad.en.json").read_text(encoding="utf-8"))["data"]
    questions = [qa["question"] for a in data for p in a["paragraphs"] for qa in p["qas"]]
    return questions[:count]


def synthetic_corpus(
    folder: str | Path, passages: int, xquad_dir: str, queries: int = 8, seed: int = 0
) -> dict[str, str]:
    """Write passages.parquet (2-4 same-language sentences each, languages in turn), queries.jsonl
    and qrels.txt (query i judges passage i) under `folder`; returns the three paths.

    Deterministic for a given seed and XQuAD folder, so every run of the benchmark sees the same
    text and the same token counts.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pool = sentence_pool(xquad_dir)
    languages = sorted(pool)
    rng = np.random.default_rng(seed)
    rows: dict[str, list[str]] = {"pid": [], "lang": [], "title": [], "text": []}
    for number in range(passages):
        lang = languages[number % len(languages)]
        picks = rng.integers(0, len(pool[lang]), size=int(rng.integers(2, 5)))
        rows["pid"].append(f"p{number:07d}")
        rows["lang"].append(lang)
        rows["title"].append(pool[lang][picks[0]][0])
        rows["text"].append(" ".join(pool[lang][i][1] for i in picks))
    paths = {
        "passages": str(folder / "passages.parquet"),
        "queries": str(folder / "queries.jsonl"),
        "qrels": str(folder / "qrels.txt"),
    }
    pq.write_table(pa.table(rows), paths["passages"])
    texts = english_questions(xquad_dir, min(queries, passages))
    with open(paths["queries"], "w", encoding="utf-8") as out:
        for number, text in enumerate(texts):
            out.write(json.dumps({"qid": f"q{number}", "lang": "en", "text": text}) + "\n")
    with open(paths["qrels"], "w", encoding="utf-8") as out:
        for number in range(len(texts)):
            out.write(f"q{number} 0 p{number:07d} 1\n")
    return paths


VOCABULARY = 20_000


def vocabulary(size: int = VOCABULARY, seed: int = 0) -> np.ndarray:
    """Pseudo-words of 3 to 9 letters (a Zipf-like draw over them makes passages differ)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(3, 10, size)
    return np.array(["".join(rng.choice(letters, n)) for n in lengths])


def scale_corpus(
    folder: Path, passages: int, queries: int = 200, seed: int = 0, block: int = 50_000
) -> dict:
    """The corpus-scale benchmark's corpus: passages.parquet (pid, title, text, lang),
    queries.parquet and qrels.txt, written in blocks, so making a 2M-passage corpus needs little
    memory. Query i is a window of passage (i * stride)'s words, judged relevant to it."""
    folder.mkdir(parents=True, exist_ok=True)
    words = vocabulary(seed=seed)
    rng = np.random.default_rng(seed + 1)
    ranks = np.arange(1, len(words) + 1)
    weights = (1.0 / ranks) / (1.0 / ranks).sum()
    stride = max(1, passages // queries)
    query_rows = {i * stride: i for i in range(min(queries, passages))}
    rows, qrels = [], []
    schema = pa.schema([("pid", pa.string()), ("title", pa.string()), ("text", pa.string()),
                        ("lang", pa.string())])  # fmt: skip
    with pq.ParquetWriter(folder / "passages.parquet", schema, compression="zstd") as writer:
        for start in range(0, passages, block):
            n = min(block, passages - start)
            lengths = rng.integers(40, 80, n)
            drawn = words[rng.choice(len(words), int(lengths.sum()), p=weights)]
            ends = np.cumsum(lengths)
            texts = [" ".join(drawn[e - k : e]) for e, k in zip(ends, lengths, strict=True)]
            pids = [f"p{start + i}" for i in range(n)]
            for i in range(n):
                if start + i in query_rows:
                    qid = f"q{query_rows[start + i]}"
                    words_of_query = " ".join(texts[i].split()[5:13])
                    rows.append({"qid": qid, "text": words_of_query, "lang": "en"})
                    qrels.append(f"{qid} 0 {pids[i]} 1")
            titles = [f"title {start + i}" for i in range(n)]
            writer.write_table(pa.table([pids, titles, texts, ["en"] * n], schema=schema))
    pq.write_table(pa.Table.from_pylist(rows), folder / "queries.parquet")
    (folder / "qrels.txt").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return {
        "passages": str(folder / "passages.parquet"),
        "queries": str(folder / "queries.parquet"),
        "qrels": str(folder / "qrels.txt"),
    }
