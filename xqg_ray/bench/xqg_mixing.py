"""How xqg's effectiveness depends on alpha and on sum vs mean, from a run's stored embeddings.

    python -m xqg_ray.bench.xqg_mixing --root runs/demo --out runs/demo/results/demo/xqg_mixing

No re-encoding: the passage, generated-query and evaluation-query embeddings of a finished run
are re-mixed for every (reduce, alpha) and searched exactly. The published setting (sum, 0.01)
assumes every passage has the same number of generated queries; when counts vary, the sum's norm
grows with the count and passages with many queries win every query. This shows that directly.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from xqg_ray.config import RunConfig, load_config
from xqg_ray.evaluate.metrics import aggregate, evaluate_run
from xqg_ray.paths import RunPaths
from xqg_ray.schema import arrow_to_vectors
from xqg_ray.stages.augment import row_positions, select_generated, xqg_mix
from xqg_ray.stages.evaluate import judged_qrels
from xqg_ray.stages.search import run_table
from xqg_ray.storage import PartitionedTable, read_table, write_bytes_atomic, write_json_atomic

ALPHAS = (0.0, 0.001, 0.01, 0.03, 0.1, 0.3, 0.5)
MEASURES = ("R@1", "RR@10")


def _exact_run(passages: pa.Table, vectors: np.ndarray, queries: pa.Table, depth: int):
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors))
    scores, rows = index.search(arrow_to_vectors(queries["vector"]), min(depth, len(vectors)))
    pids = passages["pid"].to_numpy(zero_copy_only=False)
    return run_table(queries["qid"].to_pylist(), scores, [[pids[r] for r in row] for row in rows])


def sweep(cfg: RunConfig, alphas=ALPHAS, reduces=("sum", "mean"), depth: int = 10) -> dict:
    """Macro measures of xqg for every (reduce, alpha); alpha 0 is the dense baseline."""
    paths = RunPaths(cfg.root)
    enc = cfg.encoder.name
    passages = PartitionedTable(paths.embeddings(enc, "passages")).read()
    generated = select_generated(
        PartitionedTable(paths.embeddings(enc, "generated-" + cfg.generator.name)).read(),
        cfg.augment.languages,
        cfg.augment.queries_per_language,
    )
    queries = PartitionedTable(paths.embeddings(enc, "queries")).read()
    qrels = judged_qrels(read_table(paths.corpus("qrels")), queries, passages)
    langs = dict(zip(queries["qid"].to_pylist(), queries["lang"].to_pylist(), strict=True))
    base = arrow_to_vectors(passages["vector"])
    rows = row_positions(generated["pid"], passages["pid"].to_pylist())
    counts = np.bincount(rows, minlength=len(base))
    results: dict[str, Any] = {
        "queries_per_passage": {
            "min": int(counts.min()),
            "median": float(np.median(counts)),
            "max": int(counts.max()),
        },
        "grid": [],
    }
    for reduce in reduces:
        for alpha in alphas:
            mixed = xqg_mix(base, arrow_to_vectors(generated["vector"]), rows, alpha, reduce)
            run = _exact_run(passages, mixed, queries, depth)
            macro = aggregate(evaluate_run(run, qrels, list(MEASURES)), langs)["macro"]
            results["grid"].append({"reduce": reduce, "alpha": alpha, **macro})
    return results


def table(results: dict) -> str:
    lines = [f"{'reduce':<6} {'alpha':>6} " + " ".join(f"{m:>7}" for m in MEASURES)]
    for row in results["grid"]:
        values = " ".join(f"{row[m]:>7.3f}" for m in MEASURES)
        lines.append(f"{row['reduce']:<6} {row['alpha']:>6g} {values}")
    return "\n".join(lines)


def plot_png(results: dict) -> bytes:
    """R@1 against alpha, one line per reduce: the shape is easier to read than the table."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for reduce in sorted({row["reduce"] for row in results["grid"]}):
        rows = [r for r in results["grid"] if r["reduce"] == reduce]
        ax.plot(
            [max(r["alpha"], 1e-4) for r in rows],
            [r["R@1"] for r in rows],
            marker="o",
            label=f"xqg, {reduce}",
        )
    dense = next(r["R@1"] for r in results["grid"] if r["alpha"] == 0.0)
    ax.axhline(dense, color="grey", linestyle="--", label="dense (alpha = 0)")
    ax.set_xscale("log")
    ax.set_xlabel("alpha (0 plotted at 1e-4)")
    ax.set_ylabel("R@1 (macro over languages)")
    q = results["queries_per_passage"]
    ax.set_title(f"xqg mixing; queries per passage {q['min']}-{q['max']}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def write(results: dict, out_prefix: str) -> None:
    write_json_atomic(out_prefix + ".json", results)
    write_bytes_atomic(out_prefix + ".png", plot_png(results))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", default=None, help="the run's YAML config")
    parser.add_argument("--set", "-s", action="append", default=[], help="key.path=value")
    parser.add_argument("--out", required=True, help="output prefix: writes .json and .png")
    args = parser.parse_args(argv)
    results = sweep(load_config(args.config, args.set))
    print(table(results))
    write(results, args.out)
    print(json.dumps(results["queries_per_passage"]))


if __name__ == "__main__":
    main()
