"""Random-weight checkpoints of the real architectures, built offline: they measure cost only.

Throughput does not depend on the weights (docs/architecture.md, "Stand-ins and random
weights"), so the research report times generation and encoding with models of the
published shapes (`google/mt5-base`, `bert-base-multilingual-cased`) and random weights, saved
with `save_pretrained` and loaded back through the product's own loading code and engines. Their
outputs are meaningless: never use them to measure quality. The tokenizer is a small
SentencePiece model trained on the run's own texts (`models/offline_tokenizer.py`): its ids fit in
any real vocabulary, and it splits text more finely than mT5's or mBERT's, so input lengths are if
anything overstated (inputs are capped at the configured maximum lengths either way).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSeq2SeqLM,
    BertConfig,
    MT5Config,
    PretrainedConfig,
)

from xqg_ray.models.loading import model_cache_dir
from xqg_ray.models.offline_tokenizer import (
    TOKENIZER_VERSION,
    save_bert_tokenizer,
    save_t5_tokenizer,
    train_sentencepiece_on,
)

MT5_BASE = {
    "vocab_size": 250112,
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 12,
    "num_decoder_layers": 12,
    "num_heads": 12,
}
MBERT_BASE = {
    "vocab_size": 119547,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}
SHAPE_NAMES = {"mt5-base": "mT5-base", "mbert-base": "mBERT-base"}


def mt5_config(shape: dict) -> MT5Config:
    """google/mt5-base's architecture (untied LM head, gated GELU) with the given sizes."""
    return MT5Config(
        **shape,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        relative_attention_num_buckets=32,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


def bert_config(shape: dict) -> BertConfig:
    """bert-base-multilingual-cased's architecture with the given sizes."""
    return BertConfig(
        **shape,
        max_position_embeddings=512,
        type_vocab_size=2,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )


def named_config(name: str) -> PretrainedConfig:
    """`mt5-base`, `mbert-base`, or any checkpoint whose config loads offline (name or path)."""
    if name == "mt5-base":
        return mt5_config(MT5_BASE)
    if name == "mbert-base":
        return bert_config(MBERT_BASE)
    return AutoConfig.from_pretrained(name)


def random_checkpoint(
    config: PretrainedConfig,
    texts: Sequence[str],
    cache_dir: str | os.PathLike | None = None,
) -> str:
    """A `save_pretrained` folder with `config`'s architecture, random (seeded) weights and an
    offline SentencePiece tokenizer trained on `texts` (the run's own corpus); built once per
    config and texts, then reused (atomic rename: safe when several processes build it)."""
    encoder_decoder = bool(config.is_encoder_decoder)
    texts = tuple(texts)
    recipe = json.dumps(
        {
            "config": config.to_dict(),
            "tokenizer": TOKENIZER_VERSION,
            "texts": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir else model_cache_dir().parent / "shapes"
    target = root / f"{config.model_type}-{digest}"
    if target.is_dir():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-shape-", dir=root))
    try:
        # the offline tokenizer (its ids are < 1,003, inside any real vocabulary)
        save_tokenizer = save_t5_tokenizer if encoder_decoder else save_bert_tokenizer
        save_tokenizer(train_sentencepiece_on(texts), str(staging))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model_class = AutoModelForSeq2SeqLM if encoder_decoder else AutoModel
            model_class.from_config(config).save_pretrained(str(staging))
        staging.chmod(0o755)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
