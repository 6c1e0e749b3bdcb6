"""HFGenerator on a tiny offline mT5: prompt, shape of the output, seeding, truncation, backends."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from xqg_ray.config import GeneratorConfig
from xqg_ray.errors import ConfigError
from xqg_ray.models import generator as generator_module
from xqg_ray.models.generator import (
    HFGenerator,
    load_generator,
    register_generator,
)
from xqg_ray.models.prompts import build_prompt

TITLES = ["Super Bowl 50", "Warschau", "北京"]
TEXTS = [
    "Super Bowl 50 was an American football game to determine the champion of the NFL.",
    "Warschau ist die Hauptstadt Polens.",
    "北京是中华人民共和国的首都。",
]


@pytest.fixture(scope="module")
def mt5_dir(tiny_models) -> str:
    return tiny_models["mt5"]


def make(mt5_dir: str, **overrides) -> HFGenerator:
    settings = {"model": mt5_dir, "queries_per_language": 3, "max_new_tokens": 8} | overrides
    return HFGenerator(GeneratorConfig(**settings))


def test_prompt_uses_the_english_language_name():
    template = GeneratorConfig().prompt
    assert build_prompt(template, "te", "Title", "Body text.") == (
        "Generate a Telugu question for this passage: Title Body text."
    )
    assert "Arabic" in build_prompt(template, "ar", "t", "p")


def test_prompt_keeps_braces_in_passages_and_rejects_unknown_fields():
    assert build_prompt("{language}: {passage}", "de", "", "f(x) = {x}") == "German: f(x) = {x}"
    with pytest.raises(ConfigError, match="generator.prompt"):
        build_prompt("{language} {lang}", "de", "", "")
    with pytest.raises(ConfigError, match="generator.prompt"):
        make("unused-because-the-template-fails-first", prompt="{passages}")


def test_n_queries_per_passage(mt5_dir):
    generator = load_generator(GeneratorConfig(model=mt5_dir, queries_per_language=3))
    queries = generator.generate(TITLES, TEXTS, "ar")
    assert len(queries) == len(TEXTS)
    assert all(len(group) == 3 and all(isinstance(q, str) for q in group) for group in queries)
    assert generator.generate([], [], "ar") == []


def test_same_seed_same_queries_and_caller_rng_untouched(mt5_dir):
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    first = make(mt5_dir, seed=7).generate(TITLES, TEXTS, "ja")
    assert torch.equal(torch.rand(1), expected_draw)
    assert make(mt5_dir, seed=7).generate(TITLES, TEXTS, "ja") == first
    assert make(mt5_dir, seed=8).generate(TITLES, TEXTS, "ja") != first


def test_greedy_batches_keep_passage_order(mt5_dir):
    generator = make(mt5_dir, do_sample=False, queries_per_language=1, batch_size=2)
    together = generator.generate(TITLES, TEXTS, "fi")
    alone = [
        generator.generate([title], [text], "fi")[0]
        for title, text in zip(TITLES, TEXTS, strict=True)
    ]
    assert together == alone


def test_long_passages_are_truncated_to_the_input_limit(mt5_dir):
    generator = make(mt5_dir, seed=3)
    passage = " ".join(["Der Rhein fließt durch Basel und Köln."] * 60)
    tokenizer = AutoTokenizer.from_pretrained(mt5_dir)
    prompt = build_prompt(generator.cfg.prompt, "de", "Rhein", passage)
    assert len(tokenizer(prompt).input_ids) > 256
    queries = generator.generate(["Rhein"], [passage], "de")
    longer = generator.generate(["Rhein"], [passage + " Ganz anderer Schluss." * 500], "de")
    assert queries == longer  # text past the first 256 tokens never reaches the model
    no_limit = make(mt5_dir, seed=3, max_input_length=2048)
    assert no_limit.generate(["Rhein"], [passage + " Ganz anderer Schluss." * 500], "de") != longer


def test_unknown_language_is_a_config_error(mt5_dir):
    with pytest.raises(ConfigError, match="ISO 639-1"):
        make(mt5_dir).generate(TITLES, TEXTS, "xx")


def test_titles_and_texts_must_pair_up(mt5_dir):
    with pytest.raises(ValueError, match="2 titles for 3 passages"):
        make(mt5_dir).generate(TITLES[:2], TEXTS, "ar")


def test_unknown_backend_is_a_config_error_and_backends_can_be_registered(monkeypatch):
    cfg = GeneratorConfig().model_copy(update={"backend": "echo"})
    with pytest.raises(ConfigError, match="echo"):
        load_generator(cfg)

    class Echo:
        name = "echo"

        def generate(self, titles, texts, language):
            return [[f"{language}: {text}"] for text in texts]

    registry = dict(generator_module.GENERATOR_BACKENDS)
    monkeypatch.setattr(generator_module, "GENERATOR_BACKENDS", registry)  # undone after the test
    register_generator("echo", lambda _cfg: Echo())
    assert load_generator(cfg).generate(["t"], ["p"], "de") == [["de: p"]]
