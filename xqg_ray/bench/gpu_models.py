"""Throughput of the two models xQG runs, mT5-base generation and mBERT-base encoding, the
optimised way against the naive way, and the share of the hardware's peak it reaches.

Throughput does not depend on weights (docs/architecture.md), so both models are built in memory
from the shared configs of `models/shapes.py` (the shapes of `google/mt5-base` and
`bert-base-multilingual-cased`) with random weights; inputs are random token ids. Output length
is fixed (`min_new_tokens = max_new_tokens`), so every variant does the same work.

Variants, run one after the other on the same inputs:
- `naive`: fp32, eager attention, one text at a time, `torch.no_grad`;
- `naive_batched`: fp32, eager attention, small batches in arrival order (padded to the longest);
- `optimised`: bf16 on GPUs with native bf16 (fp32 on the CPU), SDPA attention, large
  length-sorted batches padded to a multiple of 8, `torch.inference_mode`, optionally
  `torch.compile` (`--compile`, encoder only).

FLOPs are the useful matmul FLOPs of the real (unpadded) tokens; a multiply-add counts 2. Norms,
activations, softmax and embedding lookups are left out (they are a small share of the time and
no matmul unit runs them). With d = d_model, a = heads * d_kv (attention width), f = d_ff:

- mBERT forward of one passage of s tokens, L layers:
  `2 * N_enc * s + 4 * L * a * s^2`, with N_enc = L * (4 d a + 2 d f) (Q, K, V, O and the two FFN
  matrices; the `4 a s^2` term is Q K^T and the attention-weighted sum of V).
- mT5 generation of n sequences of m new tokens from one input of s tokens (gated FFN: 3 d f):
  encoder `2 * L_e (4 d a + 3 d f) * s + 4 * L_e * a * s^2`, once per input;
  cross-attention K and V of the encoder states `4 * L_d * d * a * s`, once per input (the minimum
  needed, although Hugging Face computes it for each of the n expanded sequences);
  per sequence `2 * N_tok * m + 2 * L_d * a * m (m + 1) + 4 * L_d * a * s * m`, with
  N_tok = L_d (4 d a + 2 d a + 3 d f) + d V (self-attention Q K V O, cross-attention Q O, FFN, LM
  head); token t attends to t cached positions and to the s encoder states.
  Tokens/s counts the n * m generated tokens.

Fraction of peak = achieved FLOP/s / the GPU's dense bf16 peak (table below, or `--peak-tflops`);
on the CPU only achieved GFLOP/s are reported. Goals: generation at least 3x the naive
way, encoding at least 50 % of the bf16 peak.

    python -m xqg_ray.bench.gpu_models --out results/gpu_models.json          # GPU, full shapes
    python -m xqg_ray.bench.gpu_models --small --device cpu --out /tmp/g.json  # CPU, < 1 minute
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import transformers
from transformers import BertModel, MT5ForConditionalGeneration

from xqg_ray.bench.flops import EncoderShape, Seq2SeqShape
from xqg_ray.bench.harness import format_table, machine_info, write_results
from xqg_ray.bench.timing import clocked
from xqg_ray.bench.workload import Workload, encode_step, generate_step, random_inputs
from xqg_ray.models.device import resolve_device, resolve_dtype
from xqg_ray.models.shapes import (
    MBERT_BASE,
    MBERT_MINI,
    MT5_BASE,
    MT5_MINI,
    bert_config,
    mt5_config,
)

GENERATION_SPEEDUP_GOAL = 3.0
ENCODING_PEAK_GOAL = 0.5

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets; first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"H200", 989.0),
    (r"H100.*PCIe", 756.0),
    (r"H100", 989.0),  # SXM
    (r"A100", 312.0),
    (r"\bL4\b", 121.0),
)


FULL = Workload(mt5=MT5_BASE, mbert=MBERT_BASE)
SMALL = Workload(
    mt5=MT5_MINI,
    mbert=MBERT_MINI,
    generate_inputs=8,
    generate_batch_size=8,
    generate_naive_inputs=4,
    generate_naive_batch_size=4,
    encode_inputs=128,
    encode_batch_size=64,
    encode_naive_inputs=16,
    encode_naive_batch_size=8,
)


@dataclass(frozen=True)
class Variant:
    """One way of running a model: precision, attention kernel, batching, inputs processed."""

    name: str
    dtype: torch.dtype
    attention: str
    batch_size: int
    sort_by_length: bool
    inputs: int
    inference_mode: bool
    compile: bool = False


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a known GPU, by its CUDA device name; None if unknown."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return tflops
    return None


def make_batches(
    inputs: list[torch.Tensor], variant: Variant, pad_multiple: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ids, attention mask) batches, padded on the right; sorted by length if asked."""
    order = list(range(len(inputs)))
    if variant.sort_by_length:
        order.sort(key=lambda i: len(inputs[i]))
    batches = []
    for start in range(0, len(order), variant.batch_size):
        rows = [inputs[i] for i in order[start : start + variant.batch_size]]
        width = max(len(row) for row in rows)
        width = -(-width // pad_multiple) * pad_multiple
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = row
            mask[r, : len(row)] = 1
        batches.append((ids, mask))
    return batches


def timed(
    step: Callable[[torch.Tensor, torch.Tensor], int],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    variant: Variant,
    device: torch.device,
) -> tuple[float, int]:
    """Seconds and units of work over all batches; host-to-device copies are inside the clock,
    as they are in the pipeline."""
    grad_off = torch.inference_mode() if variant.inference_mode else torch.no_grad()
    with grad_off:
        return clocked(
            lambda: sum(step(ids.to(device), mask.to(device)) for ids, mask in batches), device
        )


def prepare(model: torch.nn.Module, variant: Variant) -> torch.nn.Module:
    model.to(variant.dtype)
    model.set_attn_implementation(variant.attention)
    return model


def figures(
    variant: Variant,
    seconds: float,
    inputs: list[torch.Tensor],
    units: int,
    flops: int,
    peak: float | None,
) -> dict:
    achieved = flops / seconds
    return {
        **{k: v for k, v in asdict(variant).items() if k != "dtype"},
        "dtype": str(variant.dtype).removeprefix("torch."),
        "seconds": round(seconds, 4),
        "inputs_per_s": round(len(inputs) / seconds, 2),
        "units": units,
        "units_per_s": round(units / seconds, 2),
        "real_tokens": int(sum(len(x) for x in inputs)),
        "flops": flops,
        "achieved_gflops": round(achieved / 1e9, 3),
        "fraction_of_peak": round(achieved / (peak * 1e12), 4) if peak else None,
    }


def variants(
    workload: Workload, kind: str, fast_dtype: torch.dtype, compile_: bool
) -> list[Variant]:
    """naive, naive_batched and optimised settings of one model ('generate' or 'encode')."""
    inputs = getattr(workload, f"{kind}_inputs")
    naive_inputs = getattr(workload, f"{kind}_naive_inputs")
    return [
        Variant("naive", torch.float32, "eager", 1, False, naive_inputs, False),
        Variant(
            "naive_batched",
            torch.float32,
            "eager",
            getattr(workload, f"{kind}_naive_batch_size"),
            False,
            naive_inputs,
            False,
        ),
        Variant(
            "optimised",
            fast_dtype,
            "sdpa",
            getattr(workload, f"{kind}_batch_size"),
            True,
            inputs,
            True,
            compile_ and kind == "encode",
        ),
    ]


def run_model(
    kind: str,
    model: torch.nn.Module,
    make_step: Callable[[Callable], Callable],
    inputs: list[torch.Tensor],
    count_flops: Callable[[list[torch.Tensor]], int],
    plan: list[Variant],
    device: torch.device,
    peak: float | None,
) -> dict:
    """Each variant: warm up on its first and last batch (the whole workload when compiled),
    then time a full pass."""
    results = {}
    for variant in plan:
        runnable = prepare(model, variant)
        if variant.compile:
            runnable = torch.compile(model)
        step = make_step(runnable)
        subset = inputs[: variant.inputs]
        pad_multiple = 8 if variant.name == "optimised" else 1
        batches = make_batches(subset, variant, pad_multiple)
        timed(step, batches if variant.compile else batches[:1] + batches[-1:], variant, device)
        seconds, units = timed(step, batches, variant, device)
        results[variant.name] = figures(variant, seconds, subset, units, count_flops(subset), peak)
    optimised = results["optimised"]["units_per_s"]
    for name in ("naive", "naive_batched"):
        results[f"speedup_vs_{name}"] = round(optimised / results[name]["units_per_s"], 2)
    results["unit"] = "generated tokens" if kind == "generate" else "passages"
    return results


def run_benchmark(
    workload: Workload,
    device: torch.device,
    compile_: bool = False,
    peak_tflops: float | None = None,
    seed: int = 0,
) -> dict:
    """Both models, every variant; returns the JSON-ready report."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops or (peak_bf16_tflops(device_name) if device.type == "cuda" else None)
    fast_dtype = resolve_dtype("auto", device)

    mt5_cfg = mt5_config(workload.mt5)
    gen_dtype = torch.float32 if fast_dtype == torch.float16 else fast_dtype  # T5 overflows fp16
    with torch.device(device):
        mt5 = MT5ForConditionalGeneration(mt5_cfg).eval()
    mt5_shape = Seq2SeqShape.from_config(mt5_cfg)
    gen_inputs = random_inputs(
        rng,
        workload.generate_inputs,
        workload.generate_input_length,
        workload.min_length_fraction,
        mt5_cfg.vocab_size,
    )
    generation = run_model(
        "generate",
        mt5,
        lambda model: generate_step(model, workload),
        gen_inputs,
        lambda xs: mt5_shape.generation_flops(
            [len(x) for x in xs], workload.new_tokens, workload.sequences_per_input
        ),
        variants(workload, "generate", gen_dtype, compile_),
        device,
        peak,
    )
    mt5_params = sum(p.numel() for p in mt5.parameters())
    del mt5

    bert_cfg = bert_config(workload.mbert)
    with torch.device(device):
        bert = BertModel(bert_cfg, add_pooling_layer=False).eval()
    bert_shape = EncoderShape.from_config(bert_cfg)
    enc_inputs = random_inputs(
        rng,
        workload.encode_inputs,
        workload.encode_length,
        workload.min_length_fraction,
        bert_cfg.vocab_size,
    )
    encoding = run_model(
        "encode",
        bert,
        encode_step,
        enc_inputs,
        lambda xs: bert_shape.forward_flops([len(x) for x in xs]),
        variants(workload, "encode", fast_dtype, compile_),
        device,
        peak,
    )
    bert_params = sum(p.numel() for p in bert.parameters())

    on_gpu = device.type == "cuda"
    return {
        "device": {"type": device.type, "name": device_name},
        "machine": machine_info(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "peak_bf16_tflops": peak,
        "workload": {k: v for k, v in asdict(workload).items() if k not in ("mt5", "mbert")},
        "shapes": {
            "mt5": {**workload.mt5, "parameters": mt5_params, **asdict(mt5_shape)},
            "mbert": {**workload.mbert, "parameters": bert_params, **asdict(bert_shape)},
        },
        "generation": generation,
        "encoding": encoding,
        "goals": {
            "generation_speedup_vs_naive": GENERATION_SPEEDUP_GOAL,
            "generation_met": min(
                generation["speedup_vs_naive"], generation["speedup_vs_naive_batched"]
            )
            >= GENERATION_SPEEDUP_GOAL,
            "encoding_fraction_of_peak": ENCODING_PEAK_GOAL,
            "encoding_met": (
                encoding["optimised"]["fraction_of_peak"] >= ENCODING_PEAK_GOAL
                if on_gpu and peak
                else None
            ),
        },
    }


def summary_table(report: dict) -> str:
    """One row per model and variant, then the goals."""
    rows = []
    for model, key in (("mT5 generate", "generation"), ("mBERT encode", "encoding")):
        section = report[key]
        unit = "tokens/s" if key == "generation" else "passages/s"
        for name in ("naive", "naive_batched", "optimised"):
            row = section[name]
            share = row["fraction_of_peak"]
            rows.append(
                [
                    f"{model} {name}",
                    row["dtype"],
                    row["batch_size"],
                    f"{row['units_per_s']:.1f} {unit}",
                    row["achieved_gflops"],
                    f"{share:.1%}" if share is not None else None,
                    section[f"speedup_vs_{name}"] if name != "optimised" else None,
                ]
            )
    headers = ["model variant", "dtype", "batch", "rate", "GFLOP/s", "of peak", "optimised x"]
    goals = report["goals"]
    encoding_met = goals["encoding_met"]
    return "\n".join(
        [
            f"device: {report['device']['name']}  torch {report['torch']}  "
            f"bf16 peak: {report['peak_bf16_tflops'] or 'unknown'} TFLOP/s",
            format_table(headers, rows),
            f"goals: generation >= {goals['generation_speedup_vs_naive']}x naive: "
            f"{goals['generation_met']}; encoding >= {goals['encoding_fraction_of_peak']:.0%} of "
            f"bf16 peak: {encoding_met if encoding_met is not None else 'n/a (no known peak)'}",
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--small", action="store_true", help="tiny shapes and few inputs: runs on a CPU"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="dense bf16 peak of an unlisted GPU"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    report = run_benchmark(
        SMALL if args.small else FULL,
        resolve_device(args.device),
        compile_=args.compile,
        peak_tflops=args.peak_tflops,
        seed=args.seed,
    )
    report["small"] = args.small
    print(summary_table(report))
    if args.out:
        print(f"wrote {write_results(args.out, report)}")
    return report


if __name__ == "__main__":
    main()
