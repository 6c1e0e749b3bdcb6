"""Choose xqg's alpha and reduce on dev queries; score the published and chosen ones on test.

    python -m xqg_ray.stages.tuning --config jobs/configs/xquad.yaml

No re-encoding: the stored passage and query embeddings and each passage's generated-query sum
and count (per language, written by the encoder actor) are re-mixed for every (reduce, alpha) of
`tuning` and searched exactly (IndexFlatIP) in the headline setting's pairs.
The grid reads dev queries only; test queries are read once, after the choice, to score `dense`,
the published setting (`augment.alpha`, `augment.reduce`) and the dev-chosen one with paired
t-tests against dense. Writes `results/<experiment>/xqg_tuning.json` and `xqg_tuning.png`.
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.config import RunConfig, load_config
from xqg_ray.datasets.splits import DEV, TEST, with_role
from xqg_ray.errors import ConfigError
from xqg_ray.evaluate.tables import display_name, headline
from xqg_ray.paths import RunPaths
from xqg_ray.schema import arrow_to_vectors
from xqg_ray.stages.augment import mix_from_sums, passage_sums, sums_name
from xqg_ray.stages.evaluate import judged_qrels, kt_budget, score_run, summarize
from xqg_ray.stages.roles import run_roles
from xqg_ray.stages.search import run_table
from xqg_ray.stages.settings_eval import (
    monolingual_languages,
    resolve_setting,
    setting_measures,
)
from xqg_ray.storage import (
    PartitionedTable,
    join,
    read_table,
    write_bytes_atomic,
    write_json_atomic,
)

PUBLISHED, CHOSEN = "xqg (published)", "xqg (dev-chosen)"


@dataclass
class MixingInputs:
    """Everything the re-mixing reads, once: vectors, their languages, qrels and answers."""

    pids: np.ndarray  # passage ids in embedding order
    passage_langs: np.ndarray
    passage_vectors: np.ndarray
    query_sums: np.ndarray  # float64 (n, dim): each passage's generated-query vector sum
    query_counts: np.ndarray  # (n,): how many generated queries that sum holds
    qrels: pa.Table
    answers: dict[str, list[str]]
    texts: dict[str, str]


def read_mixing_inputs(cfg: RunConfig) -> MixingInputs:
    paths = RunPaths(cfg.root)
    enc = cfg.encoder.name
    passages = PartitionedTable(paths.embeddings(enc, "passages")).read()
    sums = PartitionedTable(paths.embeddings(enc, sums_name(cfg))).read()
    query_sums, query_counts = passage_sums(passages, sums, cfg.augment.languages)
    collection = PartitionedTable(paths.collection).read(columns=["pid", "lang", "text"])
    pids = passages["pid"].to_numpy(zero_copy_only=False)
    where = pc.index_in(passages["pid"], value_set=collection["pid"]).to_numpy(zero_copy_only=False)
    corpus_queries = read_table(paths.corpus("queries"))
    answers = {}
    if "answers" in corpus_queries.column_names:
        answers = {
            qid: values
            for qid, values in zip(
                corpus_queries["qid"].to_pylist(),
                corpus_queries["answers"].to_pylist(),
                strict=True,
            )
            if values
        }
    passage_vectors = arrow_to_vectors(passages["vector"])
    return MixingInputs(
        pids=pids,
        passage_langs=collection["lang"].to_numpy(zero_copy_only=False)[where],
        passage_vectors=passage_vectors,
        query_sums=query_sums,
        query_counts=query_counts,
        qrels=read_table(paths.corpus("qrels")),
        answers=answers,
        texts=dict(zip(collection["pid"].to_pylist(), collection["text"].to_pylist(), strict=True)),
    )


class PairSearch:
    """Exact search of query vectors against mixed passage vectors, pair by pair of a setting."""

    def __init__(self, inputs: MixingInputs, pairs, depth: int):
        self.inputs = inputs
        self.pairs = pairs
        self.depth = depth

    def _pairs(self, queries: pa.Table):
        for query_lang, langs in self.pairs:
            mine = queries.filter(pc.equal(queries["lang"], query_lang))
            if mine.num_rows:
                yield mine, np.flatnonzero(np.isin(self.inputs.passage_langs, list(langs)))

    def qrels(self, queries: pa.Table) -> pa.Table:
        """The qrels each pair can satisfy: its queries against its passages."""
        return pa.concat_tables(
            judged_qrels(self.inputs.qrels, mine, pa.table({"pid": self.inputs.pids[rows]}))
            for mine, rows in self._pairs(queries)
        )

    def run(self, mixed: np.ndarray, queries: pa.Table) -> pa.Table:
        runs = []
        for mine, rows in self._pairs(queries):
            index = faiss.IndexFlatIP(mixed.shape[1])
            index.add(np.ascontiguousarray(mixed[rows]))
            scores, found = index.search(
                arrow_to_vectors(mine["vector"]), min(self.depth, len(rows))
            )
            pids = self.inputs.pids[rows]
            runs.append(
                run_table(
                    mine["qid"].to_pylist(),
                    scores,
                    [[pids[r] if r >= 0 else None for r in row] for row in found],
                )
            )
        return pa.concat_tables(runs)


def queries_per_passage(inputs: MixingInputs) -> dict[str, Any]:
    counts = inputs.query_counts
    return {
        "min": int(counts.min()),
        "median": float(np.median(counts)),
        "max": int(counts.max()),
        "passages_without_queries": int((counts == 0).sum()),
    }


def tune_xqg(cfg: RunConfig, inputs: MixingInputs | None = None) -> dict[str, Any]:
    """The dev grid, the chosen (reduce, alpha), and dense / published / chosen on test
    (`inputs`: what `read_mixing_inputs` reads, when the caller already has it)."""
    if cfg.tuning.dev_fraction <= 0:
        raise ConfigError("tuning.dev_fraction is 0: there are no dev queries to tune on")
    if "xqg" not in cfg.augment.strategies:
        raise ConfigError("tuning chooses xqg's alpha and reduce: add xqg to augment.strategies")
    inputs = inputs if inputs is not None else read_mixing_inputs(cfg)
    roles = run_roles(cfg)
    vectors = PartitionedTable(RunPaths(cfg.root).embeddings(cfg.encoder.name, "queries")).read(
        columns=["qid", "lang", "vector"]
    )
    splits = {role: with_role(vectors, roles, [role]) for role in (DEV, TEST)}
    query_langs = sorted(set(vectors["lang"].to_pylist()))
    passage_langs = sorted(set(inputs.passage_langs.tolist()))
    setting = resolve_setting(cfg.evaluate.settings[0], query_langs, passage_langs)
    monolingual = monolingual_languages(setting)
    measures = setting_measures(cfg, inputs.qrels.num_rows > 0, bool(inputs.answers))
    measure = cfg.tuning.measure or measures[0]
    if measure not in measures:
        raise ConfigError(f"tuning.measure {measure!r} is not evaluated here; one of {measures}")
    search = PairSearch(inputs, setting.pairs, cfg.search.depth)
    needs_texts = any(kt_budget(m) for m in measures)

    def scores(split: str, alpha: float, reduce: str) -> dict[str, dict[str, float]]:
        queries = splits[split]
        mixed = mix_from_sums(
            inputs.passage_vectors, inputs.query_sums, inputs.query_counts, alpha, reduce
        )
        qrels = search.qrels(queries)
        texts = inputs.texts if needs_texts else {}
        return score_run(search.run(mixed, queries), measures, qrels, inputs.answers, texts)

    def langs_of(split: str) -> dict[str, str]:
        table = splits[split]
        return dict(zip(table["qid"].to_pylist(), table["lang"].to_pylist(), strict=True))

    grid = []
    dev_langs = langs_of(DEV)
    for reduce in cfg.tuning.reduces:
        for alpha in [0.0, *cfg.tuning.alphas]:
            if alpha == 0.0 and reduce != cfg.tuning.reduces[0]:
                continue  # alpha 0 is dense whatever the reduce
            summary = summarize({"x": scores(DEV, alpha, reduce)}, dev_langs, measures, monolingual)
            grid.append({"reduce": reduce, "alpha": alpha, **headline(summary["x"])[0]})
    candidates = [row for row in grid if row["alpha"] > 0]
    best = max(candidates, key=lambda row: (row[measure], -row["alpha"]))
    published = {"alpha": cfg.augment.alpha, "reduce": cfg.augment.reduce}
    chosen = {"alpha": best["alpha"], "reduce": best["reduce"], "dev_value": best[measure]}
    test = {
        "dense": scores(TEST, 0.0, "sum"),
        PUBLISHED: scores(TEST, published["alpha"], published["reduce"]),
        CHOSEN: scores(TEST, chosen["alpha"], chosen["reduce"]),
    }
    return {
        "setting": setting.name,
        "measure": measure,
        "measures": measures,
        "dev_queries": splits[DEV].num_rows,
        "test_queries": splits[TEST].num_rows,
        "queries_per_passage": queries_per_passage(inputs),
        "grid": grid,
        "published": published,
        "chosen": chosen,
        "test": summarize(test, langs_of(TEST), measures, monolingual),
    }


def table(result: dict[str, Any]) -> str:
    """The dev grid as text: one line per reduce, one column per alpha."""
    measure = result["measure"]
    alphas = sorted({row["alpha"] for row in result["grid"]})
    lines = [
        f"{display_name(measure)} on dev ({result['dev_queries']} queries)".ljust(24)
        + " ".join(f"{a:>6g}" for a in alphas)
    ]
    dense = next(row[measure] for row in result["grid"] if row["alpha"] == 0.0)
    for reduce in dict.fromkeys(row["reduce"] for row in result["grid"]):
        values = {row["alpha"]: row[measure] for row in result["grid"] if row["reduce"] == reduce}
        values.setdefault(0.0, dense)
        lines.append(f"xqg, {reduce}".ljust(24) + " ".join(f"{values[a]:>6.3f}" for a in alphas))
    return "\n".join(lines)


def plot_png(result: dict[str, Any]) -> bytes:
    """Dev measure against alpha, one line per reduce, the choice marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measure = result["measure"]
    fig, ax = plt.subplots(figsize=(5.8, 3.6))
    for reduce in dict.fromkeys(row["reduce"] for row in result["grid"]):
        rows = [r for r in result["grid"] if r["reduce"] == reduce and r["alpha"] > 0]
        ax.plot(
            [r["alpha"] for r in rows], [r[measure] for r in rows], "o-", label=f"xqg, {reduce}"
        )
    dense = next(row[measure] for row in result["grid"] if row["alpha"] == 0.0)
    ax.axhline(dense, color="grey", linestyle="--", label="dense")
    chosen = result["chosen"]
    ax.plot([chosen["alpha"]], [chosen["dev_value"]], "r*", markersize=14, label="dev choice")
    ax.set_xscale("log")
    ax.set_xlabel("alpha")
    ax.set_ylabel(f"{display_name(measure)} on dev")
    q = result["queries_per_passage"]
    ax.set_title(
        f"xqg mixing on {result['dev_queries']} dev queries; {q['min']}-{q['max']} generated "
        "queries per passage",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write(cfg: RunConfig, result: dict[str, Any]) -> str:
    """`xqg_tuning.json` and `xqg_tuning.png` under results/<experiment>/; returns the JSON URL."""
    out = RunPaths(cfg.root).results(cfg.evaluate.experiment)
    write_bytes_atomic(join(out, "xqg_tuning.png"), plot_png(result))
    url = join(out, "xqg_tuning.json")
    write_json_atomic(url, result)
    return url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", default=None, help="the run's YAML config")
    parser.add_argument("--set", "-s", action="append", default=[], help="key.path=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    result = tune_xqg(cfg)
    print(table(result))
    print(json.dumps({"chosen": result["chosen"], "written": write(cfg, result)}))


if __name__ == "__main__":
    main()
