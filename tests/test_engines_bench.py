"""The pieces of `python -m xqg_ray.bench.engines`, and one tiny end-to-end run (~15 s)."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("ctranslate2")

from xqg_ray.bench import engines  # noqa: E402
from xqg_ray.models.loading import CACHE_ENV  # noqa: E402
from xqg_ray.models.shapes import MBERT_MINI  # noqa: E402


def test_word_texts_are_one_token_per_word(tmp_path):
    """The benchmark's inputs have known token lengths: its tokenizer keeps its words whole."""
    from transformers import AutoTokenizer

    from xqg_ray.bench.workload import whole_words, word_corpus, word_texts
    from xqg_ray.models.offline_tokenizer import save_t5_tokenizer, train_sentencepiece_on

    save_t5_tokenizer(train_sentencepiece_on(word_corpus()), str(tmp_path))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    words = whole_words(tokenizer)
    assert len(words) >= engines.FULL.restricted_vocab
    texts = word_texts(np.random.default_rng(0), words, [1, 7, 300])
    assert [len(ids) for ids in tokenizer(texts)["input_ids"]] == [2, 8, 301]  # + </s>


def test_product_caches_stay_in_the_work_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "users-cache")
    with engines.caches_in(tmp_path):
        assert os.environ[CACHE_ENV] == str(tmp_path)
    assert os.environ[CACHE_ENV] == "users-cache"


def test_matmul_peak_is_positive():
    assert engines.matmul_peak_gflops(torch.device("cpu"), torch.float32, size=256) > 0


def test_tiny_run_end_to_end(tmp_path, monkeypatch):
    """Every row through the product's classes; nothing left in the user's caches."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    plan = replace(
        engines.QUICK,
        encoders={"mBERT-tiny": ("bert", MBERT_MINI)},
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
    assert not (tmp_path / "cache").exists()


def test_gpu_check_refuses_at_once_without_a_gpu(tmp_path):
    from xqg_ray.bench.responsiveness import gpu_check_without_a_gpu

    done = gpu_check_without_a_gpu(tmp_path / "g.json", timeout_s=120)
    assert done.returncode == 2
    assert "no CUDA GPU is visible" in done.stderr
    assert not (tmp_path / "g.json").exists()  # how fast it refuses: bench/responsiveness.py


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
