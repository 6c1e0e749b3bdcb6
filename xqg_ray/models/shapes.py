"""Random-weight checkpoints, built offline by one builder: the published architectures' shapes
(they measure cost only), the benchmarks' small shapes and the tests' tiny models.

Throughput does not depend on the weights (docs/architecture.md, "Stand-ins and random
weights"), so the research report and the engine benchmark time generation and encoding with
models of the published shapes (`google/mt5-base`, `bert-base-multilingual-cased`, ...) and random
weights, saved with `save_pretrained` and loaded back through the product's own loading code and
engines. Their outputs are meaningless: never use them to measure quality. The tokenizer is a
small SentencePiece model trained on the run's own texts (`models/offline_tokenizer.py`): its ids
fit in any real vocabulary, and it splits text more finely than mT5's or mBERT's, so input lengths
are if anything overstated (inputs are capped at the configured maximum lengths either way).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSeq2SeqLM,
    BertConfig,
    MT5Config,
    PretrainedConfig,
    XLMRobertaConfig,
)

from xqg_ray.models.loading import model_cache_dir
from xqg_ray.models.offline_tokenizer import (
    TOKENIZER_VERSION,
    save_bert_tokenizer,
    save_t5_tokenizer,
    train_sentencepiece_on,
)

# The published shapes.
MT5_BASE = {
    "vocab_size": 250112,
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 12,
    "num_decoder_layers": 12,
    "num_heads": 12,
}
MT5_SMALL = {
    "vocab_size": 250112,
    "d_model": 512,
    "d_kv": 64,
    "d_ff": 1024,
    "num_layers": 8,
    "num_decoder_layers": 8,
    "num_heads": 6,
}
MBERT_BASE = {
    "vocab_size": 119547,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}
XLMR_BASE = {
    "vocab_size": 250002,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}
# The benchmarks' smoke runs (`--small`, `--quick`): 2 layers, 64 wide; 1,024 vocabulary rows
# hold the offline tokenizer's ids.
MT5_MINI = {
    "vocab_size": 1024,
    "d_model": 64,
    "d_kv": 16,
    "d_ff": 128,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
}
MBERT_MINI = {
    "vocab_size": 1024,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 256,
}
# The tests' tiny models (`testing/tiny.py`); their vocabulary is the tokenizer's.
MT5_TINY = {
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 1,
    "num_decoder_layers": 1,
    "num_heads": 4,
    # At the default 1.0 an untrained model emits one token whatever the prompt; 3.0 makes
    # its output depend on the input and vary between samples, as tests need.
    "initializer_factor": 3.0,
}
BERT_TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
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


def xlmr_config(shape: dict) -> XLMRobertaConfig:
    """xlm-roberta-base's architecture with the given sizes. Its padding id stays XLM-R's 1
    (positions count from it): the offline tokenizer never emits id 1 (`</s>`) in a text."""
    return XLMRobertaConfig(
        **shape,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def named_config(name: str) -> PretrainedConfig:
    """`mt5-base`, `mbert-base`, or any checkpoint whose config loads offline (name or path)."""
    if name == "mt5-base":
        return mt5_config(MT5_BASE)
    if name == "mbert-base":
        return bert_config(MBERT_BASE)
    return AutoConfig.from_pretrained(name)


def save_random_checkpoint(
    out_dir: str,
    config: PretrainedConfig,
    vocabulary: bytes,
    *,
    seed: int = 0,
    fit_vocabulary: bool = False,
) -> str:
    """`config`'s architecture with random weights drawn from `seed` and the offline tokenizer of
    `vocabulary` (a serialized SentencePiece model), saved in `out_dir` by `save_pretrained`.
    `fit_vocabulary`: the model gets exactly the tokenizer's vocabulary (the tiny models; encoders
    for CTranslate2, whose XLM-R converter wants the two equal); otherwise it keeps the config's,
    which holds the tokenizer's ids (< 1,003)."""
    encoder_decoder = bool(config.is_encoder_decoder)
    save_tokenizer = save_t5_tokenizer if encoder_decoder else save_bert_tokenizer
    size = save_tokenizer(vocabulary, out_dir)
    config = copy.deepcopy(config)  # saving records the architecture in it: leave the caller's be
    if fit_vocabulary:
        config.vocab_size = size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model_class = AutoModelForSeq2SeqLM if encoder_decoder else AutoModel
        model_class.from_config(config).save_pretrained(out_dir)
    return out_dir


def build_once(target: Path, build: Callable[[str], object]) -> str:
    """`target`, made by `build(folder)` unless it is there: built in a staging folder beside it
    and renamed into place, so concurrent or interrupted builds never leave half a model behind."""
    if target.is_dir():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        build(str(staging))
        staging.chmod(0o755)  # mkdtemp makes it private; a cache is for every reader
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # not a concurrent build that got there first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def random_checkpoint(
    config: PretrainedConfig,
    texts: Sequence[str],
    cache_dir: str | os.PathLike | None = None,
    *,
    fit_vocabulary: bool = False,
) -> str:
    """A `save_pretrained` folder with `config`'s architecture, random (seeded) weights and an
    offline SentencePiece tokenizer trained on `texts` (the run's own corpus); built once per
    config and texts under `cache_dir` (default: the model cache's `shapes/`), then reused.
    `fit_vocabulary` as in `save_random_checkpoint`."""
    texts = tuple(texts)
    recipe = {
        "config": config.to_dict(),
        "tokenizer": TOKENIZER_VERSION,
        "texts": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
    }
    if fit_vocabulary:  # absent otherwise, so that earlier builds keep their names
        recipe["fit_vocabulary"] = True
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir else model_cache_dir().parent / "shapes"
    return build_once(
        root / f"{config.model_type}-{digest}",
        lambda out: save_random_checkpoint(
            out, config, train_sentencepiece_on(texts), fit_vocabulary=fit_vocabulary
        ),
    )
