"""Model stand-ins for corpus-scale runs and tests only: a hashing encoder and a template generator.

They have the shapes that matter to the pipeline (a fixed number of queries per passage and
language; one vector space for queries and passages) and cost almost nothing, so a scale run
measures the pipeline (storage, Ray, parts, shards), not a model. Neither is a product model:
they register themselves as backends (`register()`) through the same registries as the real ones,
and `scale_config` selects them (the product config schema does not list them, on purpose).

- `hashing` encoder: signed feature hashing of byte trigrams of the lower-cased text into `dim`
  dimensions (`model: hashing-64`), L2-normalised; vectorised over a whole batch with numpy.
- `template` generator: query k in a language is that language's tag followed by a window of
  the passage's words, so every passage gets exactly `queries_per_language` queries.

A Ray worker that receives such a config imports this module when it unpickles it, and importing
it registers the backends there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.config import EncoderConfig, GeneratorConfig

ENCODER_BACKEND = "hashing"
GENERATOR_BACKEND = "template"


def hashing_vectors(texts: Sequence[str], dim: int) -> np.ndarray:
    """(n, dim) float32: signed counts of hashed byte trigrams, L2-normalised (zero for texts
    shorter than three bytes)."""
    n = len(texts)
    out = np.zeros(n * dim, dtype=np.float64)
    if n == 0:
        return out.reshape(0, dim).astype(np.float32)
    array = pc.utf8_lower(pa.array(list(texts), pa.large_string()))
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + n + 1]
    start, end = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8)[start:end].astype(np.uint64)
    lengths = np.diff(offsets)
    if len(data) >= 3:
        rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
        ends = np.repeat(offsets[1:] - start, lengths)
        positions = np.arange(len(data) - 2)
        valid = positions + 2 < ends[: len(positions)]
        h = (data[:-2] * np.uint64(0x9E3779B1)) ^ (data[1:-1] * np.uint64(0x85EBCA77))
        h = (h ^ (data[2:] * np.uint64(0xC2B2AE3D))) * np.uint64(0x27D4EB2F)
        h = (h >> np.uint64(13)) & np.uint64(0xFFFFFFFF)
        index = (h % np.uint64(dim)).astype(np.int64)
        sign = np.where((h >> np.uint64(20)) & np.uint64(1), 1.0, -1.0)
        flat = rows[: len(positions)][valid] * dim + index[valid]
        out = np.bincount(flat, weights=sign[valid], minlength=n * dim)
    matrix = out.reshape(n, dim)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    return matrix.astype(np.float32)


class HashingEncoder:
    """The `Encoder` protocol over `hashing_vectors`; `model: hashing-<dim>` sets the dimension."""

    engine = "numpy-hashing"

    def __init__(self, cfg: Any):
        self.name = cfg.name
        suffix = str(cfg.model).rsplit("-", 1)[-1]
        self.dim = int(suffix) if suffix.isdigit() else 64

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return hashing_vectors(texts, self.dim)

    def encode_passages(self, texts: Sequence[str], max_length: int | None = None) -> np.ndarray:
        return hashing_vectors(texts, self.dim)


class TemplateGenerator:
    """Exactly `queries_per_language` queries per passage and language, from the passage's words.

    Query k is `<lang> <w_s ... w_s+5>` with s = 7k + len(lang tag) (mod the word count), so the
    queries share words with their passage (the hashing encoder then places them near it)."""

    engine = "template"

    def __init__(self, cfg: Any):
        self.name = cfg.name
        self.n = cfg.queries_per_language

    def generate(
        self, titles: Sequence[str], texts: Sequence[str], language: str
    ) -> list[list[str]]:
        out = []
        for text in texts:
            words = text.split() or ["empty"]
            count = len(words)
            queries = []
            for k in range(self.n):
                first = (7 * k + len(language)) % count
                window = [words[(first + j) % count] for j in range(min(6, count))]
                queries.append(f"{language} " + " ".join(window))
            out.append(queries)
        return out


def register() -> None:
    """Make `encoder.backend: hashing` and `generator.backend: template` loadable (idempotent)."""
    from xqg_ray.models.encoder import ENCODER_BACKENDS
    from xqg_ray.models.generator import register_generator

    ENCODER_BACKENDS.setdefault(ENCODER_BACKEND, HashingEncoder)
    register_generator(GENERATOR_BACKEND, TemplateGenerator)


class _RegistersBackends:
    """A scale config section registers the scale backends when it is built or unpickled (a Ray
    actor receiving the run config), not when this module is imported: no worker setup hook,
    workers that never see the config (index, search and read tasks) load no model code, and
    importing the benchmark leaves the product's registries alone."""

    def model_post_init(self, context: Any, /) -> None:
        register()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        register()


class ScaleEncoderConfig(_RegistersBackends, EncoderConfig):
    """The encoder section of a scale run: the hashing encoder."""

    backend: str = ENCODER_BACKEND  # type: ignore[assignment]


class ScaleGeneratorConfig(_RegistersBackends, GeneratorConfig):
    """The generator section of a scale run: the template generator."""

    backend: str = GENERATOR_BACKEND  # type: ignore[assignment]


def scale_config(cfg: Any, dim: int = 64) -> Any:
    """`cfg` with the hashing encoder (`dim`-d) and the template generator selected.

    The run config's schema lists only product backends; these sections are subclasses that
    allow the scale ones. Use this for scale runs and tests only."""
    out = cfg.model_copy(deep=True)
    out.encoder = ScaleEncoderConfig(
        **{**cfg.encoder.model_dump(), "backend": ENCODER_BACKEND, "model": f"hashing-{dim}"}
    )
    out.generator = ScaleGeneratorConfig(
        **{
            **cfg.generator.model_dump(),
            "backend": GENERATOR_BACKEND,
            "model": "template-generator",
        }
    )
    return out
