"""Restricted output vocabulary per target language, on both engines, and its fidelity check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("ctranslate2")

from xqg_ray.config import GeneratorConfig  # noqa: E402
from xqg_ray.errors import ConfigError  # noqa: E402
from xqg_ray.models import vocabulary  # noqa: E402
from xqg_ray.models.generator import CT2Generator, HFGenerator, load_generator  # noqa: E402

TITLES = ["Super Bowl 50", "Warschau"]
TEXTS = ["Super Bowl 50 was an American football game.", "Warschau ist die Hauptstadt Polens."]
# CTranslate2 pads a batch's candidate list to a multiple of 16 with the lowest unused ids.
CT2_PADDING_IDS = set(range(32))


@pytest.fixture(scope="module")
def samples(tmp_path_factory, shared_data) -> str:
    folder = tmp_path_factory.mktemp("vocabulary-samples")
    for lang in ("de", "zh"):
        data = json.loads((shared_data / "xquad" / f"xquad.{lang}.json").read_text("utf-8"))
        questions = [
            qa["question"]
            for article in data["data"][:3]
            for paragraph in article["paragraphs"]
            for qa in paragraph["qas"]
        ]
        (folder / f"{lang}.txt").write_text("\n".join(questions) + "\n", encoding="utf-8")
    return str(folder)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XQG_RAY_CACHE", str(tmp_path / "cache"))


def restricted(mt5: str, samples: str, **overrides) -> GeneratorConfig:
    settings = {
        "model": mt5,
        "languages": ["de", "zh"],
        "restrict_vocabulary": True,
        "vocabulary_samples": samples,
        "queries_per_language": 4,
        "max_new_tokens": 12,
    }
    return GeneratorConfig(**(settings | overrides))


def test_off_by_default():
    cfg = GeneratorConfig()
    assert cfg.restrict_vocabulary is False and cfg.vocabulary_samples is None


@pytest.mark.parametrize("engine", ["hf", "ctranslate2"])
def test_queries_use_only_the_language_tokens(tiny_models, samples, engine):
    generator = load_generator(restricted(tiny_models["mt5"], samples, engine=engine))
    assert generator.engine.endswith("-restricted")
    for lang in ("de", "zh"):
        allowed = set(generator.allowed[lang])
        if engine == "ctranslate2":
            allowed |= CT2_PADDING_IDS
        ids = generator.generate_ids(TITLES, TEXTS, lang)
        assert [len(group) for group in ids] == [4, 4]
        assert all(token in allowed for group in ids for query in group for token in query)
    assert set(generator.allowed["de"]) != set(generator.allowed["zh"])
    with pytest.raises(ConfigError, match="not in generator.languages"):
        generator.generate_ids(TITLES, TEXTS, "ar")


def test_unrestricted_output_leaves_the_set(tiny_models, samples):
    """The random tiny model samples all over its vocabulary: restriction is what changes it."""
    plain = HFGenerator(restricted(tiny_models["mt5"], samples, restrict_vocabulary=False))
    allowed = set(vocabulary.allowed_token_ids(plain.tokenizer, ["Warschau ist die Hauptstadt"]))
    ids = plain.generate_ids(TITLES, TEXTS, "de")
    assert any(token not in allowed for group in ids for query in group for token in query)


def test_vocabulary_map_is_keyed_by_the_language_name_in_the_prompt(tiny_models, samples):
    generator = CT2Generator(restricted(tiny_models["mt5"], samples))
    lines = (Path(generator.model_dir) / "vmap.txt").read_text("utf-8").splitlines()
    keys = [line.split("\t")[0] for line in lines]
    tokenizer = generator.tokenizer
    assert keys == [
        " ".join(vocabulary.language_key(tokenizer, generator.cfg.prompt, lang))
        for lang in ("de", "zh")
    ]
    spelled = [key.replace(" ", "").replace("\u2581", "") for key in keys]
    assert spelled == ["German", "Chinese"]  # the tiny vocabulary spells them in pieces
    again = CT2Generator(restricted(tiny_models["mt5"], samples))
    assert again.model_dir == generator.model_dir  # cached


def test_fidelity_is_the_top_k_mass_inside_the_set(tiny_models, samples):
    generator = HFGenerator(restricted(tiny_models["mt5"], samples, restrict_vocabulary=False))
    everything = list(range(generator.model.config.vocab_size))
    full = vocabulary.vocabulary_fidelity(generator, TITLES, TEXTS, "de", everything)
    assert full["topk_mass_inside_mean"] == full["topk_mass_inside_min"] == 1.0
    assert full["sampled_tokens_inside"] == 1.0 and full["steps"] > 0
    nothing = vocabulary.vocabulary_fidelity(generator, TITLES, TEXTS, "de", [1])
    assert nothing["topk_mass_inside_mean"] < 0.2
    allowed = vocabulary.allowed_token_ids(generator.tokenizer, ["Warschau ist die Hauptstadt"])
    part = vocabulary.vocabulary_fidelity(generator, TITLES, TEXTS, "de", allowed)
    assert 0.0 <= part["topk_mass_inside_mean"] <= 1.0


def test_samples_are_required_and_checked(tiny_models, samples, tmp_path):
    with pytest.raises(ConfigError, match="vocabulary_samples"):
        HFGenerator(restricted(tiny_models["mt5"], samples, vocabulary_samples=None))
    with pytest.raises(ConfigError, match="no sample text for ar"):
        HFGenerator(restricted(tiny_models["mt5"], samples, languages=["de", "ar"]))
    jsonl = tmp_path / "samples.jsonl"
    rows = [{"lang": "de", "text": "Wo liegt Köln?"}, {"lang": "zh", "text": "北京在哪里？"}]
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    loaded = vocabulary.load_samples(str(jsonl), ["de", "zh"])
    assert loaded == {"de": ["Wo liegt Köln?"], "zh": ["北京在哪里？"]}
    jsonl.write_text('{"lang": "de"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="lang and text"):
        vocabulary.load_samples(str(jsonl), ["de"])
