"""The synthetic corpus the throughput benchmarks build: XQuAD sentences, sampled reproducibly.

`pipeline_throughput` and the generation, encoding and scaling sweeps measure the same corpus, so
their figures compare.
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
