"""Generation and encoding engines side by side: Hugging Face / torch against CTranslate2 and
ONNX Runtime, on the shapes xQG runs, in one process and one run.

Throughput does not depend on weights (docs/architecture.md): models are built from configs with the
shapes of `google/mt5-small`, `google/mt5-base`, `bert-base-multilingual-cased` and
`xlm-roberta-base`, with random weights, and fed random token ids. Generation uses the published
decoding (top-k 10, 5 samples per passage) with a fixed output length (EOS suppressed), so every
engine does the same work; the CTranslate2 rows call `translate_batch` with the options the
production generator uses (`generator.decoding_options`). Encoders run length-sorted batches and
return CLS vectors.

Each row gives passages/s, tokens/s (generated tokens, or input tokens for encoders), the ratio
to the Hugging Face / torch row of the same model, and achieved matmul GFLOP/s as a share of this
machine's fp32 (bf16 on GPUs) matmul peak, measured in the same run with a square torch matmul.
FLOPs are counted by `bench/flops.py`, as in `gpu_models` (useful matmul FLOPs of unpadded tokens).

    python -m xqg_ray.bench.engines --out runs/bench/engines.json          # CPU, full shapes
    python -m xqg_ray.bench.engines --quick                                 # tiny shapes, < 3 min
    python -m xqg_ray.bench.engines --device cuda --out runs/bench/engines-gpu.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    BertModel,
    MT5ForConditionalGeneration,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

from xqg_ray.bench.flops import EncoderShape, Seq2SeqShape
from xqg_ray.bench.harness import format_table, machine_info, package_versions, write_results
from xqg_ray.bench.timing import clocked
from xqg_ray.bench.workload import (
    FIRST_TOKEN_ID,
    MBERT_SMALL,
    MT5_SMALL,
    Workload,
    generate_step,
    random_inputs,
)
from xqg_ray.config import GeneratorConfig
from xqg_ray.models import ct2, onnx_export, vocabulary
from xqg_ray.models.device import resolve_device
from xqg_ray.models.generator import decoding_options
from xqg_ray.models.shapes import MBERT_BASE, MT5_BASE, bert_config, mt5_config

# Shapes bench/workload.py does not have: the real mT5-small and XLM-R base (random weights).
MT5_SMALL_REAL = {
    "vocab_size": 250112,
    "d_model": 512,
    "d_kv": 64,
    "d_ff": 1024,
    "num_layers": 8,
    "num_decoder_layers": 8,
    "num_heads": 6,
}
XLMR_BASE = {
    "vocab_size": 250002,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}
XLMR_SMALL = {**MBERT_SMALL}
ENGINE_PACKAGES = ("ctranslate2", "onnxruntime", "onnx", "onnxscript")
GENERATION_GOAL = 3.5  # target: mT5-base, CPU, CTranslate2 int8 against HF generate fp32
ENCODING_GOAL = 2.0  # target: mBERT-base, CPU, fastest engine against torch fp32


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    generators: dict[str, dict] = field(
        default_factory=lambda: {"mT5-small": MT5_SMALL_REAL, "mT5-base": MT5_BASE}
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
    restricted_vocab: int = 32000  # output tokens of a language (assumed; 0: no such row)
    restriction_repeats: int = 3  # restricted vs unrestricted int8, alternating
    encode_passages: int = 64
    encode_length: int = 128
    encode_min_fraction: float = 0.5
    encode_batch: int = 32


FULL = Plan()
QUICK = Plan(
    generators={"mT5-tiny": MT5_SMALL},
    encoders={"mBERT-tiny": ("bert", MBERT_SMALL), "XLM-R-tiny": ("xlmr", XLMR_SMALL)},
    passages=8,
    encode_passages=64,
    restricted_vocab=256,
)


class VocabularyStub:
    """What the CTranslate2 converters read from a tokenizer, for a random-weight model whose
    token ids need no text: token `t<i>` for id i, T5's or BERT's special tokens."""

    def __init__(self, size: int, pad: int = 0, eos: int = 1, unk: int = 2):
        special = {pad: "<pad>", eos: "</s>", unk: "<unk>"}
        self.tokens = [special.get(i, f"t{i}") for i in range(size)]
        self.pad_token, self.eos_token, self.unk_token = special[pad], special[eos], special[unk]

    def get_vocab(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.tokens)}

    def convert_ids_to_tokens(self, ids):
        return self.tokens[ids] if isinstance(ids, int) else [self.tokens[i] for i in ids]


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


def convert_in_memory(model: torch.nn.Module, vocab_size: int, quantization: str, out: Path):
    """A CTranslate2 model from an in-memory transformers model (config read from a folder).
    The converter quantizes some weights in place, so it gets a copy."""
    model = copy.deepcopy(model)
    with tempfile.TemporaryDirectory() as config_dir:
        model.config.save_pretrained(config_dir)
        stub = VocabularyStub(vocab_size)  # encoders read only the token list and <unk>
        return ct2.convert(config_dir, out, quantization, model=model, tokenizer=stub)


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


def bench_generation(
    name: str, shape: dict, plan: Plan, device: torch.device, peak: float, work: Path, log
) -> list[dict]:
    """HF generate against CTranslate2 (int8 and float32 on CPU; bf16 types on GPU)."""
    import ctranslate2

    config = mt5_config(shape)
    gpu = device.type == "cuda"
    hf_dtype = torch.bfloat16 if gpu else torch.float32
    workload = Workload(
        mt5=shape,
        mbert=MBERT_SMALL,
        generate_input_length=plan.input_tokens,
        new_tokens=plan.output_tokens,
        sequences_per_input=plan.samples,
        top_k=plan.top_k,
    )
    rng = np.random.default_rng(0)
    inputs = random_inputs(rng, plan.passages, plan.input_tokens, 1.0, config.vocab_size)
    flops = Seq2SeqShape.from_config(config).generation_flops(
        [len(x) for x in inputs], plan.output_tokens, plan.samples
    )
    tokens = plan.passages * plan.samples * plan.output_tokens
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MT5ForConditionalGeneration(config).eval()
    rows = []

    # Hugging Face generate: one batch of all passages (equal lengths, no padding)
    model.to(device=device, dtype=hf_dtype)
    step = generate_step(model, workload)

    def hf_run(batch_inputs):
        generated = 0
        with torch.inference_mode():
            for start in range(0, len(batch_inputs), plan.generate_batch):
                ids = torch.stack(batch_inputs[start : start + plan.generate_batch]).to(device)
                generated += step(ids, torch.ones_like(ids))
        return generated

    torch.manual_seed(0)
    hf_run(inputs[:1])  # warm-up
    seconds, generated = clocked(lambda: hf_run(inputs), device)
    assert generated == tokens, (generated, tokens)
    hf_engine = "hf-" + str(hf_dtype).removeprefix("torch.")
    rows.append(_row(name, hf_engine, seconds, plan.passages, tokens, flops, peak))
    log(rows[-1])
    model.to(device="cpu", dtype=torch.float32)

    cfg = GeneratorConfig(
        queries_per_language=plan.samples,
        top_k=plan.top_k,
        fixed_output_tokens=plan.output_tokens,
        max_input_length=plan.input_tokens,
    )
    options = decoding_options(cfg)
    stub = VocabularyStub(config.vocab_size)
    source = [[stub.tokens[int(i)] for i in row] for row in inputs]
    fast, other = ("bfloat16", "int8_bfloat16") if gpu else ("int8", "float32")
    variants = [(fast, False), (other, False)]
    if plan.restricted_vocab:
        variants.append((fast, True))
    kept: dict[tuple, tuple] = {}
    for compute_type, restricted in variants:
        out = work / f"{name}-{compute_type}"
        engine = f"ctranslate2-{compute_type}"
        run_source, run_flops, extra = source, flops, {}
        if restricted:
            # a vocabulary map from one key token to `restricted_vocab` random ids (+ specials),
            # the key put at the start of every input: each batch decodes over that set only
            allowed = rng.choice(
                np.arange(FIRST_TOKEN_ID, config.vocab_size), plan.restricted_vocab, replace=False
            )
            tokens_allowed = stub.tokens[:3] + [stub.tokens[int(i)] for i in np.sort(allowed)]
            key = stub.tokens[FIRST_TOKEN_ID]
            restricted_dir = work / f"{name}-{compute_type}-vmap"
            vocabulary.add_vmap(str(out), f"{key}\t{' '.join(tokens_allowed)}\n", restricted_dir)
            out, engine = restricted_dir, f"{engine}-restricted"
            run_source = [[key, *row[1:]] for row in source]
            shape_r = replace(Seq2SeqShape.from_config(config), vocab=len(tokens_allowed))
            run_flops = shape_r.generation_flops(
                [len(x) for x in inputs], plan.output_tokens, plan.samples
            )
            extra = {"output_vocabulary": len(tokens_allowed)}
        else:
            convert_in_memory(model, config.vocab_size, compute_type, out)
        load_s, translator = clocked(
            lambda out=out, compute_type=compute_type: ctranslate2.Translator(
                str(out), compute_type=compute_type, inter_threads=1, **ct2.device_args(device)
            ),
            device,
        )
        ctranslate2.set_random_seed(0)
        run_kwargs = {"max_batch_size": plan.generate_batch * plan.input_tokens}
        run_kwargs |= {"batch_type": "tokens", "use_vmap": restricted, **options}
        translator.translate_batch(run_source[:1], **run_kwargs)  # warm-up
        seconds, results = clocked(
            lambda t=translator, kw=run_kwargs, src=run_source: t.translate_batch(src, **kw),
            device,
        )
        lengths = {len(h) for r in results for h in r.hypotheses}
        counts = {len(r.hypotheses) for r in results}
        assert lengths == {plan.output_tokens} and counts == {plan.samples}, (lengths, counts)
        if restricted:
            allowed_set = set(tokens_allowed) | set(stub.tokens[:32])  # CT2 pads to 16s
            outside = sum(t not in allowed_set for r in results for h in r.hypotheses for t in h)
            assert outside == 0, f"{outside} sampled tokens outside the restricted vocabulary"
        row = _row(
            name,
            engine,
            seconds,
            plan.passages,
            tokens,
            run_flops,
            peak,
            load_s=round(load_s, 3),
            **extra,
        )
        rows.append(row)
        log(row)
        kept[(compute_type, restricted)] = (translator, run_source, run_kwargs)
    if plan.restricted_vocab and plan.restriction_repeats:
        rows[-1] |= alternate(kept, (fast, False), (fast, True), plan.restriction_repeats, device)
        log({"restriction": rows[-1]})
    kept.clear()
    gc.collect()
    return rows


def alternate(kept: dict, base: tuple, other: tuple, repeats: int, device: torch.device) -> dict:
    """Time two translators in turn, `repeats` times each, so that a load change on a shared
    machine hits both alike; returns both medians and their ratio."""
    times: dict[tuple, list[float]] = {base: [], other: []}
    for _ in range(repeats):
        for key in (base, other):
            translator, source, kwargs = kept[key]
            seconds, _ = clocked(
                lambda t=translator, src=source, kw=kwargs: t.translate_batch(src, **kw), device
            )
            times[key].append(round(seconds, 3))
    base_s, other_s = (float(np.median(times[key])) for key in (base, other))
    return {
        "alternating_seconds": times[other],
        "alternating_seconds_unrestricted": times[base],
        "speedup_vs_unrestricted_median": round(base_s / other_s, 2),
    }


def _encoder_models(kind: str, shape: dict) -> tuple[Any, torch.nn.Module, torch.nn.Module]:
    """(config, model to convert, torch model run by the torch row)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if kind == "bert":
            config = bert_config(shape)
            model = BertModel(config).eval()  # with the pooler: CTranslate2's converter wants it
            return config, model, model
        config = XLMRobertaConfig(
            **shape,
            max_position_embeddings=514,
            type_vocab_size=1,
            pad_token_id=1,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        model = XLMRobertaForSequenceClassification(config).eval()
        return config, model, model.roberta


def _batches(inputs: list[torch.Tensor], batch: int, pad: int) -> list[tuple[Any, Any]]:
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    out = []
    for start in range(0, len(order), batch):
        rows = [inputs[i] for i in order[start : start + batch]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = row
            mask[r, : len(row)] = 1
        out.append((ids, mask))
    return out


def bench_encoding(
    name: str,
    kind: str,
    shape: dict,
    plan: Plan,
    device: torch.device,
    peak: float,
    work: Path,
    log,
) -> list[dict]:
    """torch against CTranslate2 (int8, float32) and ONNX Runtime (float32, CPU only)."""
    import ctranslate2

    config, convertible, model = _encoder_models(kind, shape)
    gpu = device.type == "cuda"
    rng = np.random.default_rng(1)
    inputs = random_inputs(
        rng, plan.encode_passages, plan.encode_length, plan.encode_min_fraction, shape["vocab_size"]
    )
    pad = config.pad_token_id
    inputs = [torch.where(x == pad, FIRST_TOKEN_ID, x) for x in inputs]
    batches = _batches(inputs, plan.encode_batch, pad)
    lengths = [len(x) for x in inputs]
    flops = EncoderShape.from_config(config).forward_flops(lengths)
    tokens = sum(lengths)
    rows = []
    reference = None

    def record(engine: str, run: Callable[[Any, Any], np.ndarray], **extra) -> None:
        nonlocal reference
        run(*batches[0])  # warm-up
        seconds, vectors = clocked(lambda: [run(ids, mask) for ids, mask in batches], device)
        stacked = np.concatenate(vectors)
        if reference is None:
            reference = stacked
        diff = float(np.abs(stacked - reference).max())
        row = _row(name, engine, seconds, len(inputs), tokens, flops, peak)
        rows.append({**row, "max_abs_diff_vs_first": round(diff, 5), **extra})
        log(rows[-1])

    torch_dtype = torch.bfloat16 if gpu else torch.float32
    model.to(device=device, dtype=torch_dtype)
    if gpu:
        model.set_attn_implementation("sdpa")

    def torch_run(ids, mask):
        with torch.inference_mode():
            hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device))
            return hidden.last_hidden_state[:, 0].float().cpu().numpy()

    record("torch-" + str(torch_dtype).removeprefix("torch."), torch_run)
    model.to(device="cpu", dtype=torch.float32)

    compute_types = ["bfloat16", "int8_bfloat16"] if gpu else ["int8", "float32"]
    for compute_type in compute_types:
        out = work / f"{name}-{compute_type}"
        convert_in_memory(convertible, shape["vocab_size"], compute_type, out)
        encoder = ctranslate2.Encoder(
            str(out), compute_type=compute_type, **ct2.device_args(device)
        )

        def ct2_run(ids, mask, encoder=encoder):
            rows_ = [r[: int(n)] for r, n in zip(ids.tolist(), mask.sum(1).tolist(), strict=True)]
            hidden = encoder.forward_batch(rows_).last_hidden_state
            if gpu:
                return torch.as_tensor(hidden, device=device)[:, 0].float().cpu().numpy()
            return np.asarray(hidden)[:, 0].copy()

        record(f"ctranslate2-{compute_type}", ct2_run)
        del encoder
        gc.collect()

    if not gpu and onnx_export.available():
        export_s, model_file = clocked(
            lambda: onnx_export.export_encoder(model, work / f"{name}-onnx", plan.encode_length),
            device,
        )
        session = onnx_export.session(model_file, device)

        def ort_run(ids, mask):
            return onnx_export.run(session, ids.numpy(), mask.numpy())[:, 0].copy()

        record("onnxruntime-float32", ort_run, export_s=round(export_s, 1))
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
    with tempfile.TemporaryDirectory(prefix="xqg-engines-") as tmp:
        work = Path(tmp)
        for name, shape in plan.generators.items():
            generation += bench_generation(name, shape, plan, device, peak, work, log)
        for name, (kind, shape) in plan.encoders.items():
            encoding += bench_encoding(name, kind, shape, plan, device, peak, work, log)
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
