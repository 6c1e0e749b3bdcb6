"""Tiny, randomly initialised mT5 and BERT checkpoints, built offline in about a second.

Tests and demos need models that load through the same `from_pretrained` code as real
checkpoints, on machines that reach no model hub. The vocabulary is a SentencePiece unigram model
trained on XQuAD text of all eleven languages, with byte fallback so any script tokenizes; the
weights are random (seeded), so outputs are meaningless but shapes, dtypes and code paths are real.

    python -m xqg_ray.models.tiny OUT_DIR [TEXT_DIR]
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import sentencepiece as spm
import torch
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Tokenizer, processors
from transformers import BertConfig, BertModel, MT5Config, MT5ForConditionalGeneration
from transformers.convert_slow_tokenizer import SpmConverter
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from xqg_ray.config import default_data_dir
from xqg_ray.errors import ConfigError

VOCAB_SIZE = 1000
# Every 4th context and question: plenty for 1000 pieces, and keeps training near one second.
_TEXT_STRIDE = 4
# T5 conventions: <pad>=0 (also the decoder start), </s>=1, <unk>=2, no <s>.
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
# BERT's special tokens, appended after the SentencePiece vocabulary.
CLS, SEP, MASK = "[CLS]", "[SEP]", "[MASK]"
BUILD_VERSION = 1  # bump when the recipe changes, so cached builds are rebuilt


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


@lru_cache(maxsize=4)
def train_sentencepiece_on(texts: tuple[str, ...]) -> bytes:
    """A serialized unigram model; single-threaded and unshuffled, so identical on every run."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=VOCAB_SIZE,
        model_type="unigram",
        byte_fallback=True,
        character_coverage=0.99,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        max_sentence_length=100_000,
        hard_vocab_limit=False,  # a small corpus may offer fewer pieces than VOCAB_SIZE
        seed_sentencepiece_size=20_000,
        shrinking_factor=0.5,
        num_sub_iterations=1,
        minloglevel=2,
    )
    return model.getvalue()


def _spm_tokenizer(spm_model: bytes) -> Tokenizer:
    """The `tokenizers` twin of the SentencePiece model (byte fallback kept), as transformers
    converts real SentencePiece checkpoints."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(spm_model)
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    return SpmConverter.build_tokenizer_from_spm_proto(proto=proto, vocab=vocab)


def _save_tokenizer(backend: Tokenizer, out_dir: str, model_max_length: int, **special) -> int:
    tokenizer = TokenizersBackend(
        tokenizer_object=backend, model_max_length=model_max_length, **special
    )
    tokenizer.save_pretrained(out_dir)
    return len(tokenizer)


def _vocabulary(text_dir: str | None, texts: tuple[str, ...] | None) -> bytes:
    return train_sentencepiece_on(texts) if texts else train_sentencepiece(text_dir)


def build_tiny_mt5(
    out_dir: str, text_dir: str | None = None, seed: int = 0, texts: tuple[str, ...] | None = None
) -> str:
    """A 1+1 layer, d_model 32 MT5ForConditionalGeneration with its tokenizer, in `out_dir`;
    the vocabulary is trained on `texts` when given, else on XQuAD in `text_dir`."""
    backend = _spm_tokenizer(_vocabulary(text_dir, texts))
    eos_id = backend.token_to_id(EOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    vocab_size = _save_tokenizer(
        backend, out_dir, model_max_length=512, pad_token=PAD, eos_token=EOS, unk_token=UNK
    )
    config = MT5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=4,
        pad_token_id=backend.token_to_id(PAD),
        eos_token_id=eos_id,
        decoder_start_token_id=backend.token_to_id(PAD),
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
    backend = _spm_tokenizer(_vocabulary(text_dir, texts))
    backend.add_special_tokens([CLS, SEP, MASK])
    cls_id, sep_id = backend.token_to_id(CLS), backend.token_to_id(SEP)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    vocab_size = _save_tokenizer(
        backend,
        out_dir,
        model_max_length=512,
        pad_token=PAD,
        unk_token=UNK,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
    )
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=backend.token_to_id(PAD),
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
        sys.exit("usage: python -m xqg_ray.models.tiny OUT_DIR [TEXT_DIR]")
    for kind, path in ensure_tiny_models(*sys.argv[1:]).items():
        print(f"{kind}: {path}")
