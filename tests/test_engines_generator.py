"""The CTranslate2 generator engine against Hugging Face generate on the tiny offline mT5."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("ctranslate2")

from xqg_ray.config import GeneratorConfig  # noqa: E402
from xqg_ray.errors import ConfigError  # noqa: E402
from xqg_ray.models import ct2  # noqa: E402
from xqg_ray.models.generator import CT2Generator, HFGenerator, load_generator  # noqa: E402

TITLES = ["Super Bowl 50", "Warschau", "北京", "Nil"]
TEXTS = [
    "Super Bowl 50 was an American football game to determine the champion of the NFL.",
    "Warschau ist die Hauptstadt Polens. " * 40,  # longer than max_input_length
    "北京是中华人民共和国的首都。",
    "",
]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XQG_RAY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "ct2"


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One conversion cache for the tests that do not look at the cache itself."""
    path = tmp_path_factory.mktemp("ct2-cache")
    before = os.environ.get("XQG_RAY_CACHE")
    os.environ["XQG_RAY_CACHE"] = str(path)
    yield path
    if before is None:
        os.environ.pop("XQG_RAY_CACHE", None)
    else:
        os.environ["XQG_RAY_CACHE"] = before


def config(mt5: str, **overrides) -> GeneratorConfig:
    settings = {
        "model": mt5,
        "queries_per_language": 3,
        "max_new_tokens": 10,
        "max_input_length": 64,
        "batch_size": 2,
    }
    return GeneratorConfig(**(settings | overrides))


def test_auto_picks_ctranslate2_int8_on_the_cpu(tiny_models, shared_cache):
    generator = load_generator(config(tiny_models["mt5"], device="cpu"))
    assert isinstance(generator, CT2Generator)
    assert generator.engine == "ctranslate2-int8"
    hf = load_generator(config(tiny_models["mt5"], engine="hf", device="cpu"))
    assert isinstance(hf, HFGenerator)
    assert hf.engine == "hf-float32"


def test_both_engines_give_the_same_table_shape(tiny_models, shared_cache):
    out = {}
    for engine in ("hf", "ctranslate2"):
        generator = load_generator(config(tiny_models["mt5"], engine=engine))
        out[engine] = generator.generate(TITLES, TEXTS, "de")
        assert generator.generate([], [], "de") == []
    for queries in out.values():
        assert len(queries) == len(TEXTS)
        assert all(len(group) == 3 for group in queries)
        assert all(isinstance(q, str) for group in queries for q in group)
    # the same languages and counts per language through the generate stage's loop
    languages = ["ar", "ja", "te"]
    for engine in ("hf", "ctranslate2"):
        generator = load_generator(config(tiny_models["mt5"], engine=engine))
        counts = {
            lang: sum(map(len, generator.generate(TITLES, TEXTS, lang))) for lang in languages
        }
        assert counts == dict.fromkeys(languages, 3 * len(TEXTS))


def test_greedy_ctranslate2_float32_reproduces_hf_token_for_token(tiny_models, shared_cache):
    """Same truncation (with </s>), same prompt, same meaning of max_new_tokens."""
    settings = {"do_sample": False, "compute_type": "float32", "queries_per_language": 2}
    hf = HFGenerator(config(tiny_models["mt5"], **settings))
    fast = CT2Generator(config(tiny_models["mt5"], **settings))
    expected = hf.generate_ids(TITLES, TEXTS, "fi")
    assert fast.generate_ids(TITLES, TEXTS, "fi") == expected
    assert fast.generate(TITLES, TEXTS, "fi") == hf.generate(TITLES, TEXTS, "fi")
    assert max(len(q) for group in expected for q in group) <= 10


def test_seeded_sampling_reproduces(tiny_models, shared_cache):
    first = CT2Generator(config(tiny_models["mt5"], seed=7))
    queries = first.generate(TITLES, TEXTS, "ja")
    assert first.generate(TITLES, TEXTS, "ja") == queries  # every call is seeded
    assert CT2Generator(config(tiny_models["mt5"], seed=7)).generate(TITLES, TEXTS, "ja") == queries
    assert CT2Generator(config(tiny_models["mt5"], seed=8)).generate(TITLES, TEXTS, "ja") != queries
    assert len({q for group in queries for q in group}) > len(TEXTS)  # samples differ


def test_a_kept_translator_is_reused_and_its_first_call_still_seeded(tiny_models, shared_cache):
    """The cost probe's option: no reload per call (so timing leaves it out), the same first
    call as the build's per-call seeding, the translator's load time on record."""
    seeded = CT2Generator(config(tiny_models["mt5"], seed=7))
    kept = CT2Generator(config(tiny_models["mt5"], seed=7))
    assert kept.translator_load_s > 0
    kept.keep_translator()
    first = kept.generate(TITLES, TEXTS, "ja")
    translator = kept._next_translator
    assert first == seeded.generate(TITLES, TEXTS, "ja")
    kept.generate(TITLES, TEXTS, "ja")
    assert kept._next_translator is translator  # the same one: nothing reloaded
    seeded.generate(TITLES, TEXTS, "ja")
    assert seeded._next_translator is None  # the build's path loads a fresh one per call


@pytest.mark.parametrize("engine", ["hf", "ctranslate2"])
def test_fixed_output_tokens_gives_exact_lengths(tiny_models, shared_cache, engine):
    generator = load_generator(config(tiny_models["mt5"], engine=engine, fixed_output_tokens=13))
    ids = generator.generate_ids(TITLES, TEXTS, "ar")
    assert [[len(q) for q in group] for group in ids] == [[13] * 3] * len(TEXTS)
    eos = generator.tokenizer.eos_token_id
    assert all(eos not in q for group in ids for q in group)


def test_conversion_is_cached_per_checkpoint_and_compute_type(tiny_models, cache):
    first = CT2Generator(config(tiny_models["mt5"]))
    assert first.model_dir.startswith(str(cache))
    stamp = os.stat(os.path.join(first.model_dir, "model.bin")).st_mtime_ns
    again = CT2Generator(config(tiny_models["mt5"]))
    assert again.model_dir == first.model_dir
    assert os.stat(os.path.join(again.model_dir, "model.bin")).st_mtime_ns == stamp
    other = CT2Generator(config(tiny_models["mt5"], compute_type="float32"))
    assert other.model_dir != first.model_dir
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        os.path.basename(d) for d in (first.model_dir, other.model_dir)
    )  # no staging folders left behind


def test_a_changed_checkpoint_is_converted_again(tiny_models, cache, tmp_path):
    import shutil

    copy = tmp_path / "mt5-copy"
    shutil.copytree(tiny_models["mt5"], copy)
    first = CT2Generator(config(str(copy))).model_dir
    assert CT2Generator(config(str(copy))).model_dir == first
    with open(copy / "generation_config.json", "a", encoding="utf-8") as handle:
        handle.write("\n")
    assert CT2Generator(config(str(copy))).model_dir != first


def test_bad_compute_type_and_missing_package_are_config_errors(tiny_models, monkeypatch):
    with pytest.raises(ConfigError, match="compute_type"):
        CT2Generator(config(tiny_models["mt5"], compute_type="int3"))
    monkeypatch.setattr(ct2, "available", lambda: False)
    assert isinstance(load_generator(config(tiny_models["mt5"])), HFGenerator)
    with pytest.raises(ConfigError, match="ctranslate2 is not installed"):
        load_generator(config(tiny_models["mt5"], engine="ctranslate2"))


def test_threads_follow_the_actor_share():
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert ct2.cpu_threads() == 1
        assert ct2.device_args(torch.device("cpu")) == {"device": "cpu", "intra_threads": 1}
    finally:
        torch.set_num_threads(before)
