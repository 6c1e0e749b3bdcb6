"""A SentencePiece tokenizer trained offline on given texts, saved as T5 or BERT would save one.

Random-weight checkpoints (`models/shapes.py`, and the tiny test models) need a tokenizer on
machines that reach no model hub. A unigram model with byte fallback tokenizes any script; its ids
(< 1,003) fit inside any real vocabulary, and `from_pretrained` loads it like a real checkpoint's.
"""

from __future__ import annotations

import io
from functools import lru_cache

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Tokenizer, processors
from transformers.convert_slow_tokenizer import SpmConverter
from transformers.tokenization_utils_tokenizers import TokenizersBackend

VOCAB_SIZE = 1000
TOKENIZER_VERSION = 1  # bump when the recipe changes, so cached builds are rebuilt
# T5 conventions: <pad>=0 (also the decoder start), </s>=1, <unk>=2, no <s>.
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
PAD_ID, EOS_ID = 0, 1
# BERT's special tokens, appended after the SentencePiece vocabulary.
CLS, SEP, MASK = "[CLS]", "[SEP]", "[MASK]"
MODEL_MAX_LENGTH = 512


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
        pad_id=PAD_ID,
        eos_id=EOS_ID,
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


def _save(backend: Tokenizer, out_dir: str, **special: str) -> int:
    tokenizer = TokenizersBackend(
        tokenizer_object=backend, model_max_length=MODEL_MAX_LENGTH, **special
    )
    tokenizer.save_pretrained(out_dir)
    return len(tokenizer)


def save_t5_tokenizer(spm_model: bytes, out_dir: str) -> int:
    """An mT5-style tokenizer (inputs end in </s>) in `out_dir`; returns its vocabulary size."""
    backend = _spm_tokenizer(spm_model)
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, EOS_ID)]
    )
    return _save(backend, out_dir, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def save_bert_tokenizer(spm_model: bytes, out_dir: str) -> int:
    """A BERT-style tokenizer (inputs wrapped in [CLS] ... [SEP]) in `out_dir`; returns its
    vocabulary size."""
    backend = _spm_tokenizer(spm_model)
    backend.add_special_tokens([CLS, SEP, MASK])
    cls_id, sep_id = backend.token_to_id(CLS), backend.token_to_id(SEP)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    return _save(
        backend,
        out_dir,
        pad_token=PAD,
        unk_token=UNK,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
    )
