"""Tiny, randomly initialised mT5 and BERT checkpoints, built offline in about a second.

Tests and benchmarks need models that load through the same `from_pretrained` code as real
checkpoints, on machines that reach no model hub. They are built by the one random-weight builder
(`models/shapes.py`, shapes `MT5_TINY` and `BERT_TINY`); the vocabulary is the offline
SentencePiece tokenizer (`models/offline_tokenizer.py`) trained on XQuAD text of all eleven
languages; the weights are random (seeded), so outputs are meaningless but shapes, dtypes and code
paths are real.

    python -m xqg_ray.testing.tiny OUT_DIR [TEXT_DIR]
"""

from __future__ import annotations

import json
import os
import sys
from functools import lru_cache, partial
from pathlib import Path

from xqg_ray.config import default_data_dir
from xqg_ray.errors import ConfigError
from xqg_ray.models.offline_tokenizer import train_sentencepiece_on
from xqg_ray.models.shapes import (
    BERT_TINY,
    MT5_TINY,
    bert_config,
    build_once,
    mt5_config,
    save_random_checkpoint,
)

# Every 4th context and question: plenty for 1000 pieces, and keeps training near one second.
_TEXT_STRIDE = 4
# Bump when this recipe or the tokenizer's (TOKENIZER_VERSION) changes: cached builds are rebuilt.
# 2: the shared configs of models/shapes.py (dropout 0 in config.json; same weights and outputs).
BUILD_VERSION = 2


def _training_text(text_dir: str | None) -> list[str]:
    folder = text_dir or default_data_dir("xquad")
    files = sorted(Path(folder).glob("*.json")) if folder else []
    if not files:
        raise ConfigError(
            f"{folder or 'shared/data/xquad'}: no SQuAD-format *.json files to train the tiny "
            "vocabulary on; pass text_dir= a folder such as shared/data/xquad"
        )
    texts: list[str] = []
    for file in files:
        for article in json.loads(file.read_text(encoding="utf-8"))["data"]:
            for paragraph in article["paragraphs"]:
                texts.append(paragraph["context"])
                texts.extend(qa["question"] for qa in paragraph["qas"])
    return texts[::_TEXT_STRIDE]


@lru_cache(maxsize=4)
def train_sentencepiece(text_dir: str | None = None) -> bytes:
    """A serialized unigram model of XQuAD's text (see `train_sentencepiece_on`)."""
    return train_sentencepiece_on(tuple(_training_text(text_dir)))


def _vocabulary(text_dir: str | None, texts: tuple[str, ...] | None) -> bytes:
    return train_sentencepiece_on(texts) if texts else train_sentencepiece(text_dir)


def build_tiny_mt5(
    out_dir: str, text_dir: str | None = None, seed: int = 0, texts: tuple[str, ...] | None = None
) -> str:
    """A 1+1 layer, d_model 32 MT5ForConditionalGeneration with its tokenizer, in `out_dir`;
    the vocabulary is trained on `texts` when given, else on XQuAD in `text_dir`."""
    vocabulary = _vocabulary(text_dir, texts)
    config = mt5_config(MT5_TINY)
    return save_random_checkpoint(out_dir, config, vocabulary, seed=seed, fit_vocabulary=True)


def build_tiny_bert(
    out_dir: str, text_dir: str | None = None, seed: int = 0, texts: tuple[str, ...] | None = None
) -> str:
    """A 2-layer, hidden 32 BertModel whose tokenizer wraps inputs in [CLS] ... [SEP]."""
    vocabulary = _vocabulary(text_dir, texts)
    config = bert_config(BERT_TINY)
    return save_random_checkpoint(out_dir, config, vocabulary, seed=seed, fit_vocabulary=True)


_BUILDERS = {"mt5": build_tiny_mt5, "bert": build_tiny_bert}


def ensure_tiny_models(
    cache_dir: str | os.PathLike, text_dir: str | None = None, seed: int = 0
) -> dict[str, str]:
    """`{"mt5": dir, "bert": dir}` under `cache_dir`, built once (`shapes.build_once`: staged
    and renamed into place) and then reused."""
    return {
        kind: build_once(
            Path(cache_dir) / f"tiny-{kind}-v{BUILD_VERSION}-seed{seed}",
            partial(build, text_dir=text_dir, seed=seed),
        )
        for kind, build in _BUILDERS.items()
    }


def tiny_run_config(root: str, models: dict[str, str], xquad_dir: str, **sections):
    """The tiny run of tests and fault scripts: 12 XQuAD paragraphs, en+de, the tiny models,
    every strategy, 2 shards; `sections` override keys (a dict merges into its section)."""
    from xqg_ray.config import RunConfig

    data = {
        "root": root,
        "dataset": {
            "name": "xquad",
            "data_dir": xquad_dir,
            "languages": ["de", "en"],
            "max_passages": 12,
        },
        "encoder": {"backend": "hf", "model": models["bert"], "batch_size": 8},
        "generator": {
            "backend": "hf",
            "model": models["mt5"],
            "languages": ["de", "en"],
            "queries_per_language": 2,
            "max_new_tokens": 8,
            "batch_size": 8,
        },
        "collection": {"passage_languages": ["en"], "passages_per_part": 4},
        "stages": {"encode": {"num_cpus": 0.5}, "generate": {"num_cpus": 0.5}},
        "ray": {"progress_bars": False},
        "index": {"shards": 2},
        "search": {"depth": 10},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return RunConfig.model_validate(data)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m xqg_ray.testing.tiny OUT_DIR [TEXT_DIR]")
    for kind, path in ensure_tiny_models(*sys.argv[1:]).items():
        print(f"{kind}: {path}")
