"""Encoder engines (torch, CTranslate2, ONNX Runtime) give torch's vectors on the tiny BERT.

Tolerances: float32 engines within 1e-4 absolute of torch fp32 (vectors of magnitude ~1);
CTranslate2 int8 within cosine 0.999 and 5e-2 absolute (weights and activations quantized).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xqg_ray.config import EncoderConfig
from xqg_ray.errors import ConfigError
from xqg_ray.models import ct2, encoder, onnx_export
from xqg_ray.models.encoder import HFEncoder, load_encoder, resolve_encoder_engine

TEXTS = [
    "Warschau ist die Hauptstadt Polens.",
    "北京是中华人民共和国的首都。",
    "a",
    "Super Bowl 50 was an American football game to determine the champion of the NFL. " * 6,
    "Der Rhein fließt durch Basel und Köln.",
]
FLOAT32_ATOL = 1e-4
INT8_MIN_COSINE = 0.999
INT8_ATOL = 5e-2


@pytest.fixture(scope="module", autouse=True)
def engine_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XQG_RAY_CACHE", str(path))
        yield path


def make(bert: str, engine: str, pooling: str, dtype: str = "auto") -> HFEncoder:
    return HFEncoder(
        EncoderConfig(
            backend="hf",
            model=bert,
            engine=engine,
            pooling=pooling,
            dtype=dtype,
            batch_size=2,
            device="cpu",
        )
    )


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_engines_match_torch(tiny_models, pooling):
    reference = make(tiny_models["bert"], "torch", pooling)
    assert reference.engine == "torch-float32"
    expected_p = reference.encode_passages(TEXTS)
    expected_q = reference.encode_queries(TEXTS)
    engines = [("ctranslate2", "float32"), ("ctranslate2", "auto"), ("onnxruntime", "auto")]
    for engine, dtype in engines:
        fast = make(tiny_models["bert"], engine, pooling, dtype)
        passages, queries = fast.encode_passages(TEXTS), fast.encode_queries(TEXTS)
        assert passages.dtype == np.float32 and passages.shape == expected_p.shape
        if fast.engine.endswith("int8"):
            assert fast.engine == "ctranslate2-int8"
            for got, want in ((passages, expected_p), (queries, expected_q)):
                assert cosine(got, want).min() >= INT8_MIN_COSINE
                np.testing.assert_allclose(got, want, atol=INT8_ATOL, rtol=0)
        else:
            assert fast.engine in ("ctranslate2-float32", "onnxruntime-float32")
            np.testing.assert_allclose(passages, expected_p, atol=FLOAT32_ATOL, rtol=0)
            np.testing.assert_allclose(queries, expected_q, atol=FLOAT32_ATOL, rtol=0)


def test_int8_vectors_do_not_depend_on_the_batch(tiny_models):
    fast = make(tiny_models["bert"], "ctranslate2", "cls")
    together = fast.encode_passages(TEXTS)
    alone = np.stack([fast.encode_passages([text])[0] for text in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)


def test_normalize_and_max_length_apply_to_every_engine(tiny_models):
    for engine in ("ctranslate2", "onnxruntime"):
        cfg = EncoderConfig(
            backend="hf", model=tiny_models["bert"], engine=engine, normalize=True, device="cpu"
        )
        vectors = load_encoder(cfg).encode_passages(TEXTS, max_length=8)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_auto_is_the_fastest_installed_cpu_engine(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_encoder_engine("auto", cpu) == encoder.CPU_ENGINE_PREFERENCE[0]
    assert resolve_encoder_engine("onnxruntime", cpu) == "onnxruntime"  # only when named
    monkeypatch.setattr(ct2, "available", lambda: False)
    assert resolve_encoder_engine("auto", cpu) == "torch"
    with pytest.raises(ConfigError, match="ctranslate2 needs ctranslate2"):
        resolve_encoder_engine("ctranslate2", cpu)
    monkeypatch.setattr(onnx_export, "available", lambda: False)
    with pytest.raises(ConfigError, match="onnxruntime"):
        resolve_encoder_engine("onnxruntime", cpu)


def test_engine_names_are_recorded(tiny_models):
    auto = load_encoder(EncoderConfig(backend="hf", model=tiny_models["bert"], device="cpu"))
    assert auto.engine == "ctranslate2-int8"
    with pytest.raises(ConfigError, match="float32 only"):
        make(tiny_models["bert"], "onnxruntime", "cls", dtype="bfloat16")
