"""Tiny, randomly initialised mT5 and BERT checkpoints, built offline in about a second.

Tests and benchmarks need models that load through the same `from_pretrained` code as real
checkpoints, on machines that reach no model hub. The vocabulary is the offline SentencePiece
tokenizer (`models/offline_tokenizer.py`) trained on XQuAD text of all eleven languages; the
weights are random (seeded), so outputs are meaningless but shapes, dtypes and code paths are real.

    python -m xqg_ray.testing.tiny OUT_DIR [TEXT_DIR]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, MT5Config, MT5ForConditionalGeneration

from xqg_ray.config import default_data_dir
from xqg_ray.errors import ConfigError
from xqg_ray.models.offline_tokenizer import (
    EOS_ID,
    PAD_ID,
    save_bert_tokenizer,
    save_t5_tokenizer,
    train_sentencepiece_on,
)

# Every 4th context and question: plenty for 1000 pieces, and keeps training near one second.
_TEXT_STRIDE = 4
# Bump when this recipe or the tokenizer's (TOKENIZER_VERSION) changes: cached builds are rebuilt.
BUILD_VERSION = 1


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
    vocab_size = save_t5_tokenizer(_vocabulary(text_dir, texts), out_dir)
    config = MT5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=4,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
        # At the default 1.0 an untrained model emits one token whatever the prompt; 3.0 makes
        # its output depend on the input and vary between samples, as tests need.
        initializer_factor=3.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        MT5ForConditionalGeneration(config).save_pretrained(out_dir)
    return out_dir


def build_tiny_bert(
    out_dir: str, text_dir: str | None = None, seed: int = 0, texts: tuple[str, ...] | None = None
) -> str:
    """A 2-layer, hidden 32 BertModel whose tokenizer wraps inputs in [CLS] ... [SEP]."""
    vocab_size = save_bert_tokenizer(_vocabulary(text_dir, texts), out_dir)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=PAD_ID,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(out_dir)
    return out_dir


_BUILDERS = {"mt5": build_tiny_mt5, "bert": build_tiny_bert}


def ensure_tiny_models(
    cache_dir: str | os.PathLike, text_dir: str | None = None, seed: int = 0
) -> dict[str, str]:
    """`{"mt5": dir, "bert": dir}` under `cache_dir`, built once and then reused.

    Each model is built in a temporary directory and renamed into place, so a concurrent or
    interrupted build never leaves a half-written model behind.
    """
    root = Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for kind, build in _BUILDERS.items():
        target = root / f"tiny-{kind}-v{BUILD_VERSION}-seed{seed}"
        if not target.is_dir():
            staging = Path(tempfile.mkdtemp(prefix=f".tmp-{kind}-", dir=root))
            try:
                build(str(staging), text_dir=text_dir, seed=seed)
                staging.chmod(0o755)  # mkdtemp makes it private; a cache is for every reader
                try:
                    os.rename(staging, target)
                except OSError:
                    if not target.is_dir():  # not a concurrent build that got there first
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        paths[kind] = str(target)
    return paths


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m xqg_ray.testing.tiny OUT_DIR [TEXT_DIR]")
    for kind, path in ensure_tiny_models(*sys.argv[1:]).items():
        print(f"{kind}: {path}")


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
