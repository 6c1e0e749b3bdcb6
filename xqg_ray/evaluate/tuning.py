"""Choose xqg's alpha and reduce on dev queries; score the published and chosen ones on test.

    python -m xqg_ray.evaluate.tuning --config jobs/configs/xquad.yaml

No re-encoding: the stored passage and query embeddings and each passage's generated-query sum
and count (per language, written by the encoder actor) are re-mixed for every (reduce, alpha) of
`tuning` and searched exactly (IndexFlatIP) in the headline setting's pairs, by one task per
collection part whose answers merge exactly as they arrive (the driver never holds the passage
vectors).
The grid reads dev queries only; test queries are read once, after the choice, to score `dense`,
the published setting (`augment.alpha`, `augment.reduce`) and the dev-chosen one with paired
tests against dense over question groups (`evaluate/paired.py`). Writes
`results/<experiment>/xqg_tuning.json` and `xqg_tuning.png`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.config import RunConfig, load_config
from xqg_ray.console import stage
from xqg_ray.datasets.splits import DEV, TEST, with_role
from xqg_ray.errors import ConfigError
from xqg_ray.evaluate.figures import png_bytes
from xqg_ray.evaluate.inputs import (
    passage_languages,
    query_answers,
    query_group_map,
    ranked_passage_texts,
)
from xqg_ray.evaluate.runs import run_table
from xqg_ray.evaluate.scoring import judged_qrels, kt_budget, score_run, summarize
from xqg_ray.evaluate.settings import monolingual_languages, resolve_setting, setting_measures
from xqg_ray.evaluate.tables import display_name, headline
from xqg_ray.index.search import empty_score
from xqg_ray.index.shard_hits import ShardHits, merge_hits
from xqg_ray.paths import RunPaths
from xqg_ray.schema import arrow_to_vectors
from xqg_ray.stages.augment import mix_from_sums, passage_sums, sums_name
from xqg_ray.stages.roles import run_roles
from xqg_ray.stages.runner import tasks_in_order
from xqg_ray.storage import (
    PartitionedTable,
    join,
    read_table,
    write_bytes_atomic,
    write_json_atomic,
)

PUBLISHED, CHOSEN = "xqg (published)", "xqg (dev-chosen)"


@dataclass
class MixingPart:
    """One collection part as the re-mixing reads it: passage vectors, their languages and pids,
    and each passage's generated-query sum and count over `augment.languages`."""

    ids: np.ndarray  # int64 passage ids
    pids: np.ndarray  # object: corpus pids
    langs: np.ndarray  # passage languages
    vectors: np.ndarray  # float32 (n, dim)
    query_sums: np.ndarray  # float64 (n, dim)
    query_counts: np.ndarray  # int64 (n,)


def read_mixing_part(cfg: RunConfig, part: str) -> MixingPart:
    """Part `part` of the passage embeddings, the sums table and the collection (aligned by
    construction: part N of every per-passage table holds the same passages)."""
    paths = RunPaths(cfg.root)
    enc = cfg.encoder.name
    passages = PartitionedTable(paths.embeddings(enc, "passages")).read_part(part)
    sums = PartitionedTable(paths.embeddings(enc, sums_name(cfg))).read_part(part)
    query_sums, query_counts = passage_sums(passages, sums, cfg.augment.languages)
    collection = PartitionedTable(paths.collection).read_part(part, columns=["pid", "lang"])
    where = pc.index_in(passages["pid"], value_set=collection["pid"]).to_numpy(zero_copy_only=False)
    return MixingPart(
        ids=passages["id"].to_numpy(),
        pids=np.asarray(passages["pid"].to_pylist(), dtype=object),
        langs=collection["lang"].to_numpy(zero_copy_only=False)[where],
        vectors=arrow_to_vectors(passages["vector"]),
        query_sums=query_sums,
        query_counts=query_counts,
    )


PartReader = Callable[[RunConfig, str], MixingPart]
Variant = tuple[str, str, float]  # (split, reduce, alpha)


@dataclass
class PartAnswer:
    """What one part task returns: each variant's top entries for its split's queries, the
    histogram of generated queries per passage, and the languages of the part's judged pids."""

    hits: list[ShardHits]
    count_histogram: np.ndarray
    judged_langs: pa.Table  # pid, lang


def search_part(
    part: MixingPart,
    queries: dict[str, pa.Table],
    variants: list[Variant],
    pairs: Sequence[tuple[str, Sequence[str]]],
    depth: int,
) -> list[ShardHits]:
    """Each variant's exact top-`depth` in this part: every pair's queries of the variant's
    split against the pair's passages, mixed with the variant's (reduce, alpha)."""
    searched = {}  # split -> [(query rows, their vectors, passage rows)], the same for every mix
    for split, table in queries.items():
        langs_of_query = np.asarray(table["lang"].to_pylist(), dtype=object)
        searched[split] = []
        for query_lang, langs in pairs:
            rows = np.flatnonzero(langs_of_query == query_lang)
            passages = np.flatnonzero(np.isin(part.langs, list(langs)))
            if len(rows) and len(passages):
                vectors = arrow_to_vectors(table["vector"].take(pa.array(rows)))
                searched[split].append((rows, vectors, passages))
    answers = []
    for split, reduce, alpha in variants:
        n = queries[split].num_rows
        hits = ShardHits(
            np.full((n, depth), empty_score(True), np.float32),
            np.full((n, depth), -1, np.int64),
            np.full((n, depth), -1, np.int64),
            np.full((n, depth), None, dtype=object),
        )
        mixed = mix_from_sums(part.vectors, part.query_sums, part.query_counts, alpha, reduce)
        for rows, vectors, passages in searched[split]:
            index = faiss.IndexFlatIP(mixed.shape[1])
            index.add(np.ascontiguousarray(mixed[passages]))
            scores, found = index.search(vectors, depth)
            ids = np.where(found >= 0, part.ids[passages][found], -1)
            hits.scores[rows], hits.ids[rows], hits.passages[rows] = scores, ids, ids
            hits.pids[rows] = np.where(found >= 0, part.pids[passages][found], None)
        answers.append(hits)
    return answers


def tune_part(
    cfg: RunConfig,
    part_name: str,
    queries: dict[str, pa.Table],
    variants: list[Variant],
    pairs: Sequence[tuple[str, Sequence[str]]],
    judged_pids: pa.Array,
    reader: PartReader,
) -> PartAnswer:
    """A task: one part's answers for every variant (see `PartAnswer`)."""
    part = reader(cfg, part_name)
    pids = pa.array(part.pids.tolist(), pa.string())
    return PartAnswer(
        hits=search_part(part, queries, variants, pairs, cfg.search.depth),
        count_histogram=np.bincount(part.query_counts),
        judged_langs=pa.table({"pid": pids, "lang": part.langs.tolist()}).filter(
            pc.is_in(pids, value_set=judged_pids)
        ),
    )


class PartsSearch:
    """Exact search of re-mixed passages, split into one task per collection part and merged
    exactly, in part order, as the parts' answers arrive: the driver holds query-sized results,
    never the passage vectors."""

    def __init__(
        self, cfg: RunConfig, queries: dict[str, pa.Table], pairs, qrels: pa.Table, reader
    ):
        self.cfg = cfg
        self.queries = queries
        self.pairs = pairs
        self.qrels = qrels
        self.reader = reader
        self.parts = sorted(PartitionedTable(RunPaths(cfg.root).collection).manifest()["parts"])
        self.histogram = np.zeros(0, np.int64)
        self.judged_langs: pa.Table | None = None

    def runs(self, variants: list[Variant]) -> list[pa.Table]:
        """Each variant's run over its split's queries."""
        judged = self.qrels["pid"].unique()
        calls = [
            (tune_part, self.cfg, part, self.queries, variants, self.pairs, judged, self.reader)
            for part in self.parts
        ]
        merged: list[ShardHits] | None = None
        histogram = np.zeros(0, np.int64)
        langs = []
        with stage("tuning", len(calls), "part", self.cfg.ray.progress_bars) as advance:
            for answer in tasks_in_order(self.cfg.ray, calls):
                if merged is None:
                    merged = answer.hits
                else:
                    pairs = zip(merged, answer.hits, strict=True)
                    merged = [merge_hits([a, b], self.cfg.search.depth, True) for a, b in pairs]
                counts = answer.count_histogram
                size = max(len(histogram), len(counts))
                histogram = np.pad(histogram, (0, size - len(histogram)))
                histogram += np.pad(counts, (0, size - len(counts)))
                langs.append(answer.judged_langs)
                advance(int(counts.sum()))  # passages searched
        self.histogram = histogram
        self.judged_langs = pa.concat_tables(langs)
        return [
            run_table(self.queries[split]["qid"].to_pylist(), hits.scores, hits.pids.tolist())
            for (split, _, _), hits in zip(variants, merged, strict=True)
        ]

    def judged(self, split: str) -> pa.Table:
        """The qrels each pair can satisfy: its queries against its passages."""
        queries = self.queries[split]
        tables = []
        for query_lang, langs in self.pairs:
            mine = queries.filter(pc.equal(queries["lang"], query_lang))
            passages = self.judged_langs.filter(
                pc.is_in(self.judged_langs["lang"], pa.array(list(langs), pa.string()))
            )
            tables.append(judged_qrels(self.qrels, mine, passages))
        return pa.concat_tables(tables)


def queries_per_passage(histogram: np.ndarray) -> dict[str, Any]:
    """min / median / max generated queries per passage, from the histogram of counts."""
    seen = np.flatnonzero(histogram)
    cumulative = np.cumsum(histogram)
    total = int(cumulative[-1])
    lower = int(np.searchsorted(cumulative, (total + 1) // 2))
    upper = int(np.searchsorted(cumulative, total // 2 + 1))
    return {
        "min": int(seen[0]),
        "median": (lower + upper) / 2,
        "max": int(seen[-1]),
        "passages_without_queries": int(histogram[0]),
    }


def tune_xqg(cfg: RunConfig, reader: PartReader = read_mixing_part) -> dict[str, Any]:
    """The dev grid, the chosen (reduce, alpha), and dense / published / chosen on test
    (`reader`: how a part task reads its part; the default reads the per-language sums)."""
    if cfg.tuning.dev_fraction <= 0:
        raise ConfigError("tuning.dev_fraction is 0: there are no dev queries to tune on")
    if "xqg" not in cfg.augment.strategies:
        raise ConfigError("tuning chooses xqg's alpha and reduce: add xqg to augment.strategies")
    paths = RunPaths(cfg.root)
    roles = run_roles(cfg)
    vectors = PartitionedTable(paths.embeddings(cfg.encoder.name, "queries")).read(
        columns=["qid", "lang", "vector"]
    )
    splits = {role: with_role(vectors, roles, [role]) for role in (DEV, TEST)}
    query_langs = sorted(set(vectors["lang"].to_pylist()))
    setting = resolve_setting(cfg.evaluate.settings[0], query_langs, passage_languages(cfg))
    monolingual = monolingual_languages(setting)
    qrels = read_table(paths.corpus("qrels"))
    answers = query_answers(cfg)
    measures = setting_measures(cfg, qrels.num_rows > 0, bool(answers))
    measure = cfg.tuning.measure or measures[0]
    if measure not in measures:
        raise ConfigError(f"tuning.measure {measure!r} is not evaluated here; one of {measures}")
    search = PartsSearch(cfg, splits, setting.pairs, qrels, reader)
    needs_texts = any(kt_budget(m) for m in measures)

    def langs_of(split: str) -> dict[str, str]:
        table = splits[split]
        return dict(zip(table["qid"].to_pylist(), table["lang"].to_pylist(), strict=True))

    def scored(variants: list[Variant]) -> list[dict[str, dict[str, float]]]:
        runs = search.runs(variants)
        texts = ranked_passage_texts(cfg, dict(enumerate(runs))) if needs_texts else {}
        return [
            score_run(run, measures, search.judged(split), answers, texts)
            for (split, _, _), run in zip(variants, runs, strict=True)
        ]

    grid_points = [
        (reduce, alpha)
        for reduce in cfg.tuning.reduces
        for alpha in [0.0, *cfg.tuning.alphas]
        if alpha > 0.0 or reduce == cfg.tuning.reduces[0]  # alpha 0 is dense whatever the reduce
    ]
    published = {"alpha": cfg.augment.alpha, "reduce": cfg.augment.reduce}
    first = scored(
        [(DEV, reduce, alpha) for reduce, alpha in grid_points]
        + [(TEST, "sum", 0.0), (TEST, published["reduce"], published["alpha"])]
    )
    dev_langs = langs_of(DEV)
    grid = []
    for (reduce, alpha), scores in zip(grid_points, first, strict=False):
        summary = summarize({"x": scores}, dev_langs, measures, monolingual)
        grid.append({"reduce": reduce, "alpha": alpha, **headline(summary["x"])[0]})
    candidates = [row for row in grid if row["alpha"] > 0]
    best = max(candidates, key=lambda row: (row[measure], -row["alpha"]))
    chosen = {"alpha": best["alpha"], "reduce": best["reduce"], "dev_value": best[measure]}
    dense_test, published_test = first[-2:]
    same = (chosen["alpha"], chosen["reduce"]) == (published["alpha"], published["reduce"])
    chosen_test = published_test if same else scored([(TEST, chosen["reduce"], chosen["alpha"])])[0]
    test = {"dense": dense_test, PUBLISHED: published_test, CHOSEN: chosen_test}
    return {
        "setting": setting.name,
        "measure": measure,
        "measures": measures,
        "dev_queries": splits[DEV].num_rows,
        "test_queries": splits[TEST].num_rows,
        "queries_per_passage": queries_per_passage(search.histogram),
        "grid": grid,
        "published": published,
        "chosen": chosen,
        "test": summarize(test, langs_of(TEST), measures, monolingual, query_group_map(cfg)),
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
    return png_bytes(fig)


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
