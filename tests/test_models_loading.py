"""Device/dtype choice, language names, checkpoint resolution and the tiny offline models."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import fsspec
import huggingface_hub.constants
import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from xqg_ray.config import EncoderConfig, GeneratorConfig
from xqg_ray.errors import ConfigError, ModelError
from xqg_ray.languages import language_name
from xqg_ray.models.device import resolve_device, resolve_dtype
from xqg_ray.models.encoder import HFEncoder
from xqg_ray.models.generator import HFGenerator
from xqg_ray.models.loading import resolve_model_path
from xqg_ray.testing.tiny import build_tiny_bert, ensure_tiny_models, train_sentencepiece


@pytest.fixture(scope="module")
def xquad(shared_data) -> str:
    return str(shared_data / "xquad")


def test_auto_device_follows_cuda_availability():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


def test_bad_device_names_are_config_errors():
    with pytest.raises(ConfigError, match="gpu0"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_dtype_auto_is_fp32_on_cpu_and_explicit_names_map():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) is torch.float32
    assert resolve_dtype("bfloat16", cpu) is torch.bfloat16
    assert resolve_dtype("float16", cpu) is torch.float16
    with pytest.raises(ConfigError):
        resolve_dtype("int8", cpu)


def test_language_names_cover_the_benchmarks():
    assert language_name("ar") == "Arabic"
    assert language_name("te") == "Telugu"
    assert language_name("ZH") == "Chinese"
    xor_tydi = ["ar", "bn", "fi", "ja", "ko", "ru", "te"]
    xquad = ["ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"]
    names = [language_name(code) for code in xor_tydi + xquad]
    assert all(name and name[0].isupper() for name in names)
    assert len(set(names)) == len(set(xor_tydi + xquad))  # one distinct name per code


def test_unknown_language_code_is_a_config_error():
    with pytest.raises(ConfigError, match="ISO 639-1"):
        language_name("xx")
    with pytest.raises(ConfigError):
        language_name("arabic")


def test_local_dirs_and_hub_names_resolve_as_given(tiny_models):
    assert resolve_model_path(tiny_models["bert"]) == tiny_models["bert"]
    assert resolve_model_path("file://" + tiny_models["bert"]) == tiny_models["bert"]
    assert resolve_model_path("ielabgroup/xor-tydi-docTquery-mt5-base") == (
        "ielabgroup/xor-tydi-docTquery-mt5-base"
    )


def test_directory_without_weights_names_the_path(tiny_models, tmp_path):
    broken = tmp_path / "no-weights"
    broken.mkdir()
    shutil.copy(Path(tiny_models["bert"]) / "config.json", broken)
    with pytest.raises(ModelError, match="no model weights") as info:
        resolve_model_path(str(broken))
    assert str(broken) in str(info.value)
    with pytest.raises(ModelError, match="no model weights"):
        HFEncoder(EncoderConfig(backend="hf", model=str(broken)))


def test_missing_paths_and_files_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="no such model directory"):
        resolve_model_path(str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match="not a model directory"):
        resolve_model_path(str(tmp_path))  # exists, but empty
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model_path(str(weights))


def test_unreachable_hub_says_to_pass_a_local_path(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match="pass a local or s3:// directory") as info:
        HFEncoder(EncoderConfig(backend="hf", model="no-such-org/no-such-model"))
    assert "no-such-org/no-such-model" in str(info.value)


def test_checkpoint_of_the_wrong_kind_is_refused(tiny_models):
    with pytest.raises(ModelError, match="sequence-to-sequence"):
        HFGenerator(GeneratorConfig(model=tiny_models["bert"]))
    with pytest.raises(ModelError, match="encoder-only"):
        HFEncoder(EncoderConfig(backend="hf", model=tiny_models["mt5"]))


def test_remote_directory_is_copied_once_into_the_cache(tiny_models, tmp_path, monkeypatch):
    fs = fsspec.filesystem("memory")
    remote = "memory://models/tiny-bert"
    fs.put(tiny_models["bert"] + "/", "/models/tiny-bert", recursive=True)
    try:
        monkeypatch.setenv("XQG_RAY_CACHE", str(tmp_path / "cache"))
        local = resolve_model_path(remote)
        assert Path(local).is_relative_to(tmp_path / "cache")
        assert sorted(os.listdir(local)) == sorted(os.listdir(tiny_models["bert"]))
        assert resolve_model_path(remote) == local  # reused, not copied again
        encoder = HFEncoder(EncoderConfig(backend="hf", model=remote))
        assert encoder.encode_queries(["hallo"]).shape == (1, 32)

        fs.pipe("/models/tiny-bert/config.json", b'{"model_type": "bert", "changed": 1}')
        assert resolve_model_path(remote) != local  # a changed checkpoint is copied afresh
    finally:
        fs.rm("/models", recursive=True)


def test_remote_directory_that_does_not_exist_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="memory://absent/model"):
        resolve_model_path("memory://absent/model", cache_dir=tmp_path)


def test_tiny_models_load_with_auto_classes(tiny_models):
    assert AutoConfig.from_pretrained(tiny_models["mt5"]).model_type == "mt5"
    assert AutoConfig.from_pretrained(tiny_models["bert"]).model_type == "bert"
    bert_tokenizer = AutoTokenizer.from_pretrained(tiny_models["bert"])
    ids = bert_tokenizer("Hallo Welt").input_ids
    assert ids[0] == bert_tokenizer.cls_token_id and ids[-1] == bert_tokenizer.sep_token_id


def test_tiny_tokenizer_byte_fallback_round_trips_any_script(tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["mt5"])
    text = "తెలుగు 한국어 ქართული ☃"  # scripts absent from XQuAD
    ids = tokenizer(text).input_ids
    assert tokenizer.unk_token_id not in ids
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tiny_vocabulary_training_is_deterministic(xquad):
    assert train_sentencepiece.__wrapped__(xquad) == train_sentencepiece(xquad)  # fresh vs cached


def test_tiny_build_is_deterministic_per_seed(tmp_path, xquad):
    first = Path(build_tiny_bert(str(tmp_path / "a"), text_dir=xquad, seed=1))
    again = Path(build_tiny_bert(str(tmp_path / "b"), text_dir=xquad, seed=1))
    other = Path(build_tiny_bert(str(tmp_path / "c"), text_dir=xquad, seed=2))
    weights = "model.safetensors"
    assert (first / weights).read_bytes() == (again / weights).read_bytes()
    assert (first / weights).read_bytes() != (other / weights).read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_ensure_tiny_models_builds_once_and_leaves_no_temporaries(tmp_path, xquad):
    paths = ensure_tiny_models(tmp_path, text_dir=xquad)
    stamp = {kind: os.stat(path).st_mtime_ns for kind, path in paths.items()}
    assert ensure_tiny_models(tmp_path, text_dir=xquad) == paths
    assert {kind: os.stat(path).st_mtime_ns for kind, path in paths.items()} == stamp
    assert sorted(os.listdir(tmp_path)) == sorted(Path(path).name for path in paths.values())


def test_tiny_build_without_text_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="text_dir"):
        build_tiny_bert(str(tmp_path / "out"), text_dir=str(tmp_path))


def test_random_checkpoint_builds_once_per_recipe(tmp_path):
    """The one random-weight builder: cached by config and texts, staged and renamed into place;
    `fit_vocabulary` gives the model exactly the tokenizer's vocabulary."""
    from xqg_ray.models.shapes import MBERT_MINI, bert_config, random_checkpoint

    texts = ["ein kleiner Satz", "a small sentence", "une petite phrase"] * 20
    config = bert_config(MBERT_MINI)
    path = random_checkpoint(config, texts, tmp_path)
    fitted = random_checkpoint(config, texts, tmp_path, fit_vocabulary=True)
    assert random_checkpoint(config, texts, tmp_path) == path != fitted
    assert sorted(os.listdir(tmp_path)) == sorted([Path(path).name, Path(fitted).name])
    assert AutoConfig.from_pretrained(path).vocab_size == MBERT_MINI["vocab_size"]
    assert AutoConfig.from_pretrained(fitted).vocab_size == len(AutoTokenizer.from_pretrained(path))
