"""The pieces of `python -m xqg_ray.bench.engines`, and one tiny end-to-end run (~15 s)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

pytest.importorskip("ctranslate2")

from xqg_ray.bench import engines  # noqa: E402


def test_vocabulary_stub_has_t5_special_tokens():
    stub = engines.VocabularyStub(10)
    assert stub.get_vocab()["</s>"] == 1 and stub.pad_token == "<pad>"
    assert stub.convert_ids_to_tokens(0) == "<pad>"
    assert stub.convert_ids_to_tokens([5, 9]) == ["t5", "t9"]


def test_conversion_leaves_the_benchmarked_model_untouched(tmp_path):
    """CTranslate2's converter quantizes weights in place; the torch row must not see that."""
    _, convertible, model = engines._encoder_models("bert", engines.MBERT_SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engines.convert_in_memory(convertible, 1024, "int8", tmp_path / "m")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert (tmp_path / "m" / "model.bin").is_file()


def test_matmul_peak_is_positive():
    assert engines.matmul_peak_gflops(torch.device("cpu"), torch.float32, size=256) > 0


def test_tiny_run_end_to_end(tmp_path):
    plan = replace(
        engines.QUICK,
        encoders={"mBERT-tiny": ("bert", engines.MBERT_SMALL)},
        passages=2,
        input_tokens=32,
        output_tokens=6,
        encode_passages=8,
        encode_length=32,
        encode_batch=4,
    )
    report = engines.run(plan, torch.device("cpu"), log=lambda _: None)
    generation = {row["engine"]: row for row in report["generation"]}
    assert list(generation) == [
        "hf-float32",
        "ctranslate2-int8",
        "ctranslate2-float32",
        "ctranslate2-int8-restricted",
    ]
    assert generation["ctranslate2-int8-restricted"]["output_vocabulary"] == 3 + 256
    assert generation["hf-float32"]["ratio_vs_baseline"] == 1.0
    assert all(
        row["passages_per_s"] > 0 and row["share_of_peak"] > 0 for row in generation.values()
    )
    encoding = {row["engine"]: row for row in report["encoding"]}
    assert list(encoding)[:3] == ["torch-float32", "ctranslate2-int8", "ctranslate2-float32"]
    assert encoding["ctranslate2-float32"]["max_abs_diff_vs_first"] < 1e-3
    assert encoding["ctranslate2-int8"]["max_abs_diff_vs_first"] < 0.1
    if "onnxruntime-float32" in encoding:
        assert encoding["onnxruntime-float32"]["max_abs_diff_vs_first"] < 1e-3
    assert report["goals"]["mt5_base_met"] is None  # not measured by this plan
    text = engines.summary(report)
    assert "ctranslate2-int8" in text and "random weights" in text
    json.dumps(report)  # the report is JSON-ready


def test_gpu_check_refuses_at_once_without_a_gpu(tmp_path):
    import subprocess
    import sys
    import time

    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "xqg_ray.bench.gpu_check", "--out", str(tmp_path / "g.json")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 2
    assert "no CUDA GPU is visible" in done.stderr
    assert not (tmp_path / "g.json").exists()
    assert time.perf_counter() - start < 60


def test_text_cut_to_512_tokens_stays_within_512(shared_data):
    from transformers import AutoTokenizer

    from xqg_ray.bench.encoders import cut_to_tokens
    from xqg_ray.config import OFFLINE_E5
    from xqg_ray.models.loading import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(OFFLINE_E5))
    data = json.loads((shared_data / "xquad" / "xquad.en.json").read_text())["data"]
    text = " ".join(p["context"] for p in data[0]["paragraphs"][:6])
    (cut,) = cut_to_tokens(tokenizer, [text], 512)
    assert 480 <= len(tokenizer("passage: " + cut)["input_ids"]) <= 512
    assert text.startswith(cut[:100]) and len(cut) < len(text)
