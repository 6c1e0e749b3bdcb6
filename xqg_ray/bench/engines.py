"""Generation and encoding engines side by side: Hugging Face / torch against CTranslate2 and
ONNX Runtime, on the shapes xQG runs, in one process and one run.

Every row runs the product's own classes: `load_generator` (`HFGenerator`, `CT2Generator`) and
`load_encoder` (`HFEncoder` on the torch, ctranslate2 and onnxruntime engines), so the figures
include the tokenization, batching, conversion and decoding options users run. Throughput does not
depend on weights (docs/architecture.md): the checkpoints have the shapes of `google/mt5-small`,
`google/mt5-base`, `bert-base-multilingual-cased` and `xlm-roberta-base` and random weights,
written by the one random-weight builder (`models/shapes.random_checkpoint`) with an offline
tokenizer trained on pseudo-words; the inputs are texts of those words, one token each
(`workload.word_texts`). Generation uses the published prompt and decoding (top-k 10, 5 samples
per passage) with inputs truncated to exactly `input_tokens` and a fixed output length
(`fixed_output_tokens`, EOS suppressed), so every engine does the same work; CTranslate2 keeps one
translator while timed (`CT2Generator.keep_translator`), and the restricted row restricts the
output vocabulary as the product does (`restrict_vocabulary`, here to `restricted_vocab` words).
Encoders run length-sorted batches of `encode_batch` texts and return CLS vectors.

Each row gives passages/s, tokens/s (generated tokens, or input tokens for encoders), the ratio
to the Hugging Face / torch row of the same model, and achieved matmul GFLOP/s as a share of this
machine's fp32 (bf16 on GPUs) matmul peak, measured in the same run with a square torch matmul.
FLOPs are counted by `bench/flops.py`, as in `gpu_models` (useful matmul FLOPs of unpadded tokens).
Checkpoints, conversions and exports go to a temporary folder (`XQG_RAY_CACHE` points there for
the run), not to the user's cache.

    python -m xqg_ray.bench.engines --out runs/bench/engines.json          # CPU, full shapes
    python -m xqg_ray.bench.engines --quick                                 # tiny shapes, < 3 min
    python -m xqg_ray.bench.engines --device cuda --out runs/bench/engines-gpu.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PretrainedConfig

from xqg_ray.bench.flops import EncoderShape, Seq2SeqShape
from xqg_ray.bench.harness import format_table, machine_info, package_versions, write_results
from xqg_ray.bench.timing import clocked
from xqg_ray.bench.workload import whole_words, word_corpus, word_texts
from xqg_ray.config import EncoderConfig, GeneratorConfig
from xqg_ray.models import onnx_export
from xqg_ray.models.device import resolve_device
from xqg_ray.models.encoder import load_encoder
from xqg_ray.models.generator import load_generator
from xqg_ray.models.loading import CACHE_ENV, load_tokenizer
from xqg_ray.models.prompts import prompts_for
from xqg_ray.models.shapes import (
    MBERT_BASE,
    MBERT_MINI,
    MT5_BASE,
    MT5_MINI,
    MT5_SMALL,
    XLMR_BASE,
    bert_config,
    mt5_config,
    random_checkpoint,
    xlmr_config,
)

ENGINE_PACKAGES = ("ctranslate2", "onnxruntime", "onnx", "onnxscript")
ENCODER_CONFIGS = {"bert": bert_config, "xlmr": xlmr_config}
LANGUAGE = "de"  # the generated language; the restricted row's vocabulary map keys on its name
GENERATION_GOAL = 3.5  # target: mT5-base, CPU, CTranslate2 int8 against HF generate fp32
ENCODING_GOAL = 2.0  # target: mBERT-base, CPU, fastest engine against torch fp32


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    generators: dict[str, dict] = field(
        default_factory=lambda: {"mT5-small": MT5_SMALL, "mT5-base": MT5_BASE}
    )
    encoders: dict[str, tuple[str, dict]] = field(
        default_factory=lambda: {
            "mBERT-base": ("bert", MBERT_BASE),
            "XLM-R-base": ("xlmr", XLMR_BASE),
        }
    )
    passages: int = 16
    input_tokens: int = 256
    samples: int = 5
    output_tokens: int = 24
    top_k: int = 10
    generate_batch: int = 16
    # output words of the language, plus the special tokens (0: no such row); at most the
    # offline tokenizer's whole words (`workload.whole_words`: 575), so not mT5's 32k
    restricted_vocab: int = 512
    restriction_repeats: int = 3  # restricted vs unrestricted int8, alternating
    encode_passages: int = 64
    encode_length: int = 128
    encode_min_fraction: float = 0.5
    encode_batch: int = 32


FULL = Plan()
QUICK = Plan(
    generators={"mT5-tiny": MT5_MINI},
    encoders={"mBERT-tiny": ("bert", MBERT_MINI), "XLM-R-tiny": ("xlmr", MBERT_MINI)},
    passages=8,
    encode_passages=64,
    restricted_vocab=256,
)


@dataclass(frozen=True)
class Bench:
    """What every row of a run shares."""

    plan: Plan
    device: torch.device
    peak: float
    work: Path
    log: Callable[[dict], None]


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, size: int = 2048) -> float:
    """Best of a few square matmuls: the machine's practical matmul ceiling right now."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    reps = 3 if device.type == "cpu" else 20
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


@contextmanager
def caches_in(folder: Path) -> Iterator[None]:
    """The product's conversion and export caches (`XQG_RAY_CACHE`) inside `folder` while the
    run lasts: conversions of random weights are not worth keeping."""
    saved = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = saved


def checkpoint(config: PretrainedConfig, bench: Bench) -> str:
    """The random-weight checkpoint of `config`, its tokenizer trained on the words the inputs
    are made of. An encoder gets the tokenizer's vocabulary: an embedding lookup costs the same
    at any vocabulary size, and CTranslate2's XLM-R converter wants the two sizes equal."""
    encoder = not config.is_encoder_decoder
    return random_checkpoint(
        config, word_corpus(), bench.work / "checkpoints", fit_vocabulary=encoder
    )


def _row(
    model: str,
    engine: str,
    seconds: float,
    passages: int,
    tokens: int,
    flops: int,
    peak: float,
    **extra: Any,
) -> dict:
    gflops = flops / seconds / 1e9
    return {
        "model": model,
        "engine": engine,
        "seconds": round(seconds, 3),
        "passages_per_s": round(passages / seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "achieved_gflops": round(gflops, 2),
        "share_of_peak": round(gflops / peak, 4),
        **extra,
    }


@dataclass(frozen=True)
class Passages:
    """Generation inputs: titles and texts whose prompts are cut to exactly `input_tokens`."""

    titles: list[str]
    texts: list[str]
    lengths: list[int]

    @classmethod
    def of_words(cls, tokenizer: Any, cfg: GeneratorConfig, count: int) -> Passages:
        rng = np.random.default_rng(0)
        words = whole_words(tokenizer)
        titles = word_texts(rng, words, [1] * count)
        texts = word_texts(rng, words, [cfg.max_input_length] * count)
        prompts = prompts_for(cfg, titles, texts, LANGUAGE)
        fed = tokenizer(prompts, truncation=True, max_length=cfg.max_input_length)["input_ids"]
        lengths = [len(ids) for ids in fed]
        assert set(lengths) == {cfg.max_input_length}, lengths
        return cls(titles, texts, lengths)


def time_generator(
    name: str, cfg: GeneratorConfig, passages: Passages, flop_shape: Seq2SeqShape, bench: Bench
) -> tuple[dict, Callable[[], Any]]:
    """One generator's row (after a warm-up call), and a call that repeats its timed work."""
    plan = bench.plan
    generator = load_generator(cfg)
    extra: dict[str, Any] = {}
    keep = getattr(generator, "keep_translator", None)
    if keep is not None:  # CTranslate2: no per-call translator reload while timed
        keep()
        extra["load_s"] = round(generator.translator_load_s, 3)

    def work() -> list[list[list[int]]]:
        return generator.generate_ids(passages.titles, passages.texts, LANGUAGE)

    generator.generate_ids(passages.titles[:1], passages.texts[:1], LANGUAGE)  # warm-up
    seconds, ids = clocked(work, bench.device)
    lengths = {len(query) for queries in ids for query in queries}
    counts = {len(queries) for queries in ids}
    assert lengths == {plan.output_tokens} and counts == {plan.samples}, (lengths, counts)
    allowed = getattr(generator, "allowed", None)
    if allowed is not None:
        allowed_ids = set(allowed[LANGUAGE]) | set(range(32))  # CT2 pads the set to 16s
        outside = sum(t not in allowed_ids for queries in ids for q in queries for t in q)
        assert outside == 0, f"{outside} sampled tokens outside the restricted vocabulary"
        extra["output_vocabulary"] = len(allowed[LANGUAGE])
        flop_shape = replace(flop_shape, vocab=len(allowed[LANGUAGE]))
    flops = flop_shape.generation_flops(passages.lengths, plan.output_tokens, plan.samples)
    tokens = plan.passages * plan.samples * plan.output_tokens
    row = _row(name, generator.engine, seconds, plan.passages, tokens, flops, bench.peak, **extra)
    bench.log(row)
    return row, work


def bench_generation(name: str, shape: dict, bench: Bench) -> list[dict]:
    """HF generate against CTranslate2 (int8 and float32 on CPU; bf16 types on GPU)."""
    plan, gpu = bench.plan, bench.device.type == "cuda"
    config = mt5_config(shape)
    path = checkpoint(config, bench)
    base = GeneratorConfig(
        model=path,
        languages=[LANGUAGE],
        queries_per_language=plan.samples,
        top_k=plan.top_k,
        fixed_output_tokens=plan.output_tokens,
        max_input_length=plan.input_tokens,
        batch_size=plan.generate_batch,
        device=str(bench.device),
    )
    tokenizer = load_tokenizer(path)
    passages = Passages.of_words(tokenizer, base, plan.passages)
    flop_shape = Seq2SeqShape.from_config(config)

    def row(**settings: Any) -> tuple[dict, Callable[[], Any]]:
        return time_generator(name, base.model_copy(update=settings), passages, flop_shape, bench)

    rows = [row(engine="hf", dtype="bfloat16" if gpu else "float32")[0]]
    fast, other = ("bfloat16", "int8_bfloat16") if gpu else ("int8", "float32")
    fast_row, fast_work = row(engine="ctranslate2", compute_type=fast)
    rows += [fast_row, row(engine="ctranslate2", compute_type=other)[0]]
    gc.collect()
    if plan.restricted_vocab:
        samples = restriction_samples(tokenizer, plan.restricted_vocab, bench.work / name)
        restricted, restricted_work = row(
            engine="ctranslate2",
            compute_type=fast,
            restrict_vocabulary=True,
            vocabulary_samples=samples,
        )
        if plan.restriction_repeats:
            restricted |= alternate(fast_work, restricted_work, plan.restriction_repeats, bench)
            bench.log({"restriction": restricted})
        rows.append(restricted)
    return rows


def restriction_samples(tokenizer: Any, words: int, folder: Path) -> str:
    """A vocabulary-samples folder whose `LANGUAGE` text is `words` distinct whole words."""
    chosen = whole_words(tokenizer)[:words]
    if len(chosen) < words:
        raise ValueError(f"restricted_vocab {words}: the tokenizer has {len(chosen)} whole words")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{LANGUAGE}.txt").write_text("\n".join(chosen) + "\n", encoding="utf-8")
    return str(folder)


def alternate(
    base: Callable[[], Any], other: Callable[[], Any], repeats: int, bench: Bench
) -> dict:
    """Time two generators in turn, `repeats` times each, so that a load change on a shared
    machine hits both alike; returns both medians and their ratio."""
    times: dict[str, list[float]] = {"base": [], "other": []}
    for _ in range(repeats):
        for key, work in (("base", base), ("other", other)):
            times[key].append(round(clocked(work, bench.device)[0], 3))
    base_s, other_s = (float(np.median(times[key])) for key in ("base", "other"))
    return {
        "alternating_seconds": times["other"],
        "alternating_seconds_unrestricted": times["base"],
        "speedup_vs_unrestricted_median": round(base_s / other_s, 2),
    }


def encoder_engines(device: torch.device) -> list[tuple[str, str]]:
    """(engine, `encoder.dtype`) of each encoding row: torch (the baseline), CTranslate2 in the
    types `encoder.dtype` offers it (auto: int8 on the CPU), ONNX Runtime (CPU only)."""
    if device.type == "cuda":
        return [("torch", "bfloat16"), ("ctranslate2", "bfloat16"), ("ctranslate2", "float16")]
    engines = [("torch", "float32"), ("ctranslate2", "auto"), ("ctranslate2", "float32")]
    return engines + ([("onnxruntime", "float32")] if onnx_export.available() else [])


def encoder_texts(tokenizer: Any, plan: Plan) -> tuple[list[str], list[int]]:
    """Texts of whole words whose token lengths are uniform in [`encode_min_fraction` *
    `encode_length`, `encode_length`], and those lengths as the encoder reads them."""
    specials = len(tokenizer("")["input_ids"])
    rng = np.random.default_rng(1)
    low = max(specials + 1, round(plan.encode_min_fraction * plan.encode_length))
    targets = rng.integers(low, plan.encode_length + 1, size=plan.encode_passages)
    texts = word_texts(rng, whole_words(tokenizer), targets - specials)
    fed = tokenizer(texts, truncation=True, max_length=plan.encode_length)["input_ids"]
    return texts, [len(ids) for ids in fed]


def bench_encoding(name: str, kind: str, shape: dict, bench: Bench) -> list[dict]:
    """torch against CTranslate2 (int8, float32) and ONNX Runtime (float32, CPU only)."""
    plan, device = bench.plan, bench.device
    config = ENCODER_CONFIGS[kind](shape)
    path = checkpoint(config, bench)
    texts, lengths = encoder_texts(load_tokenizer(path), plan)
    flops = EncoderShape.from_config(config).forward_flops(lengths)
    base = EncoderConfig(
        model=path,
        pooling="cls",
        normalize=False,
        passage_max_length=plan.encode_length,
        batch_size=plan.encode_batch,
        batch_tokens=plan.encode_batch * plan.encode_length,  # batches of encode_batch texts
        device=str(device),
    )
    rows = []
    reference = None
    for engine, dtype in encoder_engines(device):
        settings = {"engine": engine, "dtype": dtype}
        load_s, encoder = clocked(
            lambda s=settings: load_encoder(base.model_copy(update=s)), device
        )
        encoder.encode_passages(texts[: plan.encode_batch])  # warm-up
        seconds, vectors = clocked(lambda e=encoder: e.encode_passages(texts), device)
        if reference is None:
            reference = vectors
        diff = float(np.abs(vectors - reference).max())
        row = _row(name, encoder.engine, seconds, len(texts), sum(lengths), flops, bench.peak)
        row["max_abs_diff_vs_first"] = round(diff, 5)
        if engine == "onnxruntime":
            row["export_s"] = round(load_s, 1)  # the export, made when the encoder loads
        rows.append(row)
        bench.log(row)
        del encoder
        gc.collect()
    return rows


def ratios(rows: list[dict]) -> None:
    """Each row's passages/s against the first (HF / torch) row of the same model."""
    base: dict[str, float] = {}
    for row in rows:
        base.setdefault(row["model"], row["passages_per_s"])
        row["ratio_vs_baseline"] = round(row["passages_per_s"] / base[row["model"]], 2)


def run(plan: Plan, device: torch.device, log=print) -> dict:
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak_gflops(device, peak_dtype)
    log({"matmul_peak_gflops": round(peak, 1), "dtype": str(peak_dtype)})
    generation, encoding = [], []
    with tempfile.TemporaryDirectory(prefix="xqg-engines-") as tmp, caches_in(Path(tmp)):
        bench = Bench(plan, device, peak, Path(tmp), log)
        for name, shape in plan.generators.items():
            generation += bench_generation(name, shape, bench)
        for name, (kind, shape) in plan.encoders.items():
            encoding += bench_encoding(name, kind, shape, bench)
    peak_after = matmul_peak_gflops(device, peak_dtype)
    ratios(generation)
    ratios(encoding)
    return {
        "device": {
            "type": device.type,
            "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        },
        "machine": machine_info(),
        "engine_versions": package_versions(ENGINE_PACKAGES),
        "weights": "random (throughput does not depend on weights)",
        "plan": json.loads(json.dumps(asdict(plan))),
        "matmul_peak_gflops": {
            "dtype": str(peak_dtype).removeprefix("torch."),
            "before": round(peak, 1),
            "after": round(peak_after, 1),
        },
        "generation": generation,
        "encoding": encoding,
        "goals": goals(generation, encoding, device),
    }


def goals(generation: list[dict], encoding: list[dict], device: torch.device) -> dict:
    """The engine targets on the CPU (docs/benchmarks.md), where this run measured their rows."""
    if device.type != "cpu":
        return {}

    def ratio(rows: list[dict], model: str, engine: str | None = None) -> float | None:
        found = [r["ratio_vs_baseline"] for r in rows if r["model"] == model]
        if engine:
            found = [
                r["ratio_vs_baseline"]
                for r in rows
                if r["model"] == model and r["engine"] == engine
            ]
        return max(found) if found else None

    gen = ratio(generation, "mT5-base", "ctranslate2-int8")
    enc = ratio(encoding, "mBERT-base")
    return {
        "mt5_base_ct2_int8_vs_hf": gen,
        "mt5_base_goal": GENERATION_GOAL,
        "mt5_base_met": None if gen is None else gen >= GENERATION_GOAL,
        "mbert_base_best_vs_torch": enc,
        "mbert_base_goal": ENCODING_GOAL,
        "mbert_base_met": None if enc is None else enc >= ENCODING_GOAL,
    }


def summary(report: dict) -> str:
    headers = ["model", "engine", "passages/s", "tokens/s", "x baseline", "GFLOP/s", "of peak"]
    lines = [
        f"device: {report['device']['name']}, {report['machine']['cpus_usable']} usable CPUs, "
        f"matmul peak {report['matmul_peak_gflops']['before']} GFLOP/s "
        f"({report['matmul_peak_gflops']['dtype']}), random weights"
    ]
    for key in ("generation", "encoding"):
        rows = [
            [
                r["model"],
                r["engine"],
                r["passages_per_s"],
                r["tokens_per_s"],
                r["ratio_vs_baseline"],
                r["achieved_gflops"],
                f"{r['share_of_peak']:.1%}",
            ]
            for r in report[key]
        ]
        if rows:
            lines += ["", key, format_table(headers, rows)]
    if report["goals"]:
        lines += ["", "goals: " + json.dumps(report["goals"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny shapes: < 3 min on 2 CPUs")
    parser.add_argument("--only", choices=["generation", "encoding"], default=None)
    parser.add_argument("--models", default=None, help="comma-separated model names to run")
    parser.add_argument("--passages", type=int, default=None, help="generation passages")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.passages:
        plan = replace(plan, passages=args.passages)
    if args.only == "generation":
        plan = replace(plan, encoders={})
    elif args.only == "encoding":
        plan = replace(plan, generators={})
    if args.models:
        keep = set(args.models.split(","))
        plan = replace(
            plan,
            generators={k: v for k, v in plan.generators.items() if k in keep},
            encoders={k: v for k, v in plan.encoders.items() if k in keep},
        )
    device = resolve_device(args.device)

    def log(item: dict) -> None:
        print(json.dumps(item), flush=True)

    report = run(plan, device, log)
    report["quick"] = args.quick
    if args.out:
        written = write_results(args.out, report)
    print(summary(report))
    if args.out:
        print(f"wrote {written}")
    return report


if __name__ == "__main__":
    main()
