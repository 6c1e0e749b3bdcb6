"""Exact re-mixing from stored per-query vectors: the engine of the frontier and the sensitivity.

A *mix* says which generated-query vectors each passage of a collection part folds in, for a
query of each language (`frontier.py` selects the first n of chosen languages, `sensitivity.py`
swaps some for off-topic or wrong-language ones). Scores decompose exactly,
q . e'_p = (1 - alpha) q . e_p + alpha * reduce_j q . e_q_j, so one product of the queries with
the part's distinct vectors serves every mix, alpha and reduce, and multivector is the max over
the same products: nothing is re-encoded or re-indexed. One task per collection part returns,
per variant and query, the relevant passage's score and the part's top-K scores; merged over
parts they give the relevant passage's exact rank below K (a tie counts in its favour).

Measured on cross-lingual queries with one relevant passage each (XQuAD X->en): R@1 and RR@10.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.config import RunConfig
from xqg_ray.console import stage
from xqg_ray.datasets.splits import DEV, TEST, with_role
from xqg_ray.errors import ConfigError
from xqg_ray.evaluate.inputs import passage_languages, query_group_map
from xqg_ray.evaluate.paired import paired_test
from xqg_ray.evaluate.settings import monolingual_languages, resolve_setting
from xqg_ray.paths import RunPaths, generated_vectors
from xqg_ray.schema import arrow_to_vectors
from xqg_ray.stages.roles import run_roles
from xqg_ray.stages.runner import tasks_in_order
from xqg_ray.storage import PartitionedTable, read_table

MEASURES = ("R@1", "RR@10")
DEPTH = 10  # the deepest cutoff of MEASURES
Variant = tuple[str, str, float]  # (xqg | multivector, reduce, alpha); ("xqg", *, 0) is dense
DENSE: Variant = ("xqg", "sum", 0.0)


@dataclass
class Part:
    """One collection part as a mix reads it: passages, and the generated-query rows (passage
    row, language, k, text) whose vectors are the first rows of `bank`."""

    pids: np.ndarray  # object (P,)
    langs: np.ndarray  # object (P,): passage languages
    vectors: np.ndarray  # float32 (P, dim)
    name: str  # the part's name
    row_passage: np.ndarray  # int64 (R,)
    row_lang: np.ndarray  # object (R,)
    row_k: np.ndarray  # int64 (R,)
    row_text: np.ndarray  # object (R,)
    bank: np.ndarray  # float32 (R + extra, dim): the rows' vectors, then any a mix adds


@dataclass
class Mix:
    """Entries (passage row, bank row, language asked for), and per query language the
    generated languages it folds in (a language missing from `languages`: none, i.e. dense)."""

    passage: np.ndarray
    vector: np.ndarray
    lang: np.ndarray
    languages: dict[str, list[str]] = field(default_factory=dict)


Planner = Callable[[RunConfig, Part], list[Mix]]


def read_part(cfg: RunConfig, name: str) -> Part:
    """Part `name` of the passage vectors, the per-query vectors (written for multivector) and
    the generated texts, aligned by (pid, lang, k)."""
    paths = RunPaths(cfg.root)
    enc, gen = cfg.encoder.name, cfg.generator.name
    passages = PartitionedTable(paths.embeddings(enc, "passages")).read_part(name)
    collection = PartitionedTable(paths.collection).read_part(name, columns=["pid", "lang"])
    where = pc.index_in(passages["pid"], value_set=collection["pid"]).to_numpy(zero_copy_only=False)
    vectors = PartitionedTable(paths.embeddings(enc, generated_vectors(gen))).read_part(name)
    texts = PartitionedTable(paths.generated(gen)).read_part(name)
    order = [("pid", "ascending"), ("lang", "ascending"), ("k", "ascending")]
    rows = vectors.take(pc.sort_indices(vectors, order))
    texts = texts.take(pc.sort_indices(texts, order))
    for key in ("pid", "lang", "k"):
        if not rows[key].equals(texts[key]):
            raise ValueError(f"part {name}: generated texts and vectors differ in {key}")
    pids = np.asarray(passages["pid"].to_pylist(), dtype=object)
    row_passage = pc.index_in(rows["pid"], value_set=passages["pid"]).to_numpy(zero_copy_only=False)
    return Part(
        name=name,
        pids=pids,
        langs=collection["lang"].to_numpy(zero_copy_only=False)[where],
        vectors=arrow_to_vectors(passages["vector"]),
        row_passage=np.asarray(row_passage, np.int64),
        row_lang=np.asarray(rows["lang"].to_pylist(), dtype=object),
        row_k=rows["k"].to_numpy().astype(np.int64),
        row_text=np.asarray(texts["text"].to_pylist(), dtype=object),
        bank=arrow_to_vectors(rows["vector"]),
    )


@dataclass
class Queries:
    """The scored queries: cross-lingual, judged, one relevant passage each."""

    qids: list[str]
    langs: np.ndarray  # object
    vectors: np.ndarray  # float32
    relevant: np.ndarray  # object: the relevant pid
    searched: dict[str, tuple[str, ...]]  # query language -> passage languages it searches


@dataclass
class Scores:
    """Per query: the relevant passage's score (-inf where it is not in the part) and the
    part's top-DEPTH scores."""

    relevant: np.ndarray
    top: np.ndarray


def score_part(part: Part, queries: Queries, mixes: Sequence[Mix], variants) -> list[list[Scores]]:
    """Every mix's variants (`variants[i]` for `mixes[i]`) for every query, in this part."""
    dense = queries.vectors @ part.vectors.T
    unique, inverse = np.unique(part.bank, axis=0, return_inverse=True)
    products = queries.vectors @ unique.T
    relevant_row = pc.index_in(
        pa.array(queries.relevant.tolist(), pa.string()),
        value_set=pa.array(part.pids.tolist(), pa.string()),
    ).to_numpy(zero_copy_only=False)
    relevant_row = np.where(np.isnan(relevant_row.astype(float)), -1, relevant_row).astype(int)
    n, passages = len(queries.qids), len(part.pids)
    out = []
    for mix, mix_variants in zip(mixes, variants, strict=True):
        answers = [
            Scores(np.full(n, -np.inf, np.float32), np.full((n, DEPTH), -np.inf, np.float32))
            for _ in mix_variants
        ]
        for lang in np.unique(queries.langs):
            rows = np.flatnonzero(queries.langs == lang)
            searched = np.isin(part.langs, list(queries.searched[lang]))
            chosen = np.isin(mix.lang, mix.languages.get(lang, []))
            sums, counts, maxima = _fold(
                products[rows][:, inverse[mix.vector[chosen]]], mix.passage[chosen], passages
            )
            for answer, (strategy, reduce, alpha) in zip(answers, mix_variants, strict=True):
                if strategy == "multivector":
                    scores = np.maximum(dense[rows], maxima)
                else:
                    folded = sums / np.maximum(counts, 1) if reduce == "mean" else sums
                    scores = (1 - alpha) * dense[rows] + alpha * folded
                scores = np.where(searched, scores, -np.inf).astype(np.float32)
                _keep(answer, rows, scores, relevant_row[rows])
        out.append(answers)
    return out


def _fold(products: np.ndarray, passage: np.ndarray, passages: int):
    """Per query and passage: the sum, count and max of the entries' products (entries sorted
    by passage; a passage without entries: 0, 0, -inf)."""
    order = np.argsort(passage, kind="stable")
    products, passage = products[:, order], passage[order]
    counts = np.bincount(passage, minlength=passages)
    sums = np.zeros((products.shape[0], passages), np.float32)
    maxima = np.full((products.shape[0], passages), -np.inf, np.float32)
    present = np.flatnonzero(counts)
    if len(present):
        starts = np.searchsorted(passage, present)
        sums[:, present] = np.add.reduceat(products, starts, axis=1)
        maxima[:, present] = np.maximum.reduceat(products, starts, axis=1)
    return sums, counts, maxima


def _keep(answer: Scores, rows: np.ndarray, scores: np.ndarray, relevant: np.ndarray) -> None:
    here = relevant >= 0
    answer.relevant[rows[here]] = scores[np.flatnonzero(here), relevant[here]]
    depth = min(DEPTH, scores.shape[1])
    top = -np.partition(-scores, depth - 1, axis=1)[:, :depth]
    answer.top[rows, :depth] = top


def part_task(
    cfg: RunConfig, name: str, queries: Queries, planner: Planner, variants
) -> list[list[Scores]]:
    """A task: read part `name`, plan its mixes, score them."""
    part = read_part(cfg, name)
    return score_part(part, queries, planner(cfg, part), variants)


def ranks(cfg: RunConfig, queries: Queries, planner: Planner, variants, label: str):
    """Every (mix, variant)'s rank of each query's relevant passage (DEPTH: below the cutoff),
    one task per collection part, merged in part order as the answers arrive."""
    parts = sorted(PartitionedTable(RunPaths(cfg.root).collection).manifest()["parts"])
    calls = [(part_task, cfg, part, queries, planner, variants) for part in parts]
    merged = None
    with stage(label, len(calls), "part", cfg.ray.progress_bars) as advance:
        for answer in tasks_in_order(cfg.ray, calls):
            if merged is None:
                merged = answer
            else:
                for mine, theirs in zip(merged, answer, strict=True):
                    for a, b in zip(mine, theirs, strict=True):
                        a.relevant = np.maximum(a.relevant, b.relevant)
                        both = np.concatenate([a.top, b.top], axis=1)
                        a.top = -np.partition(-both, DEPTH - 1, axis=1)[:, :DEPTH]
            advance(1)
    return [
        [np.minimum((s.top > s.relevant[:, None]).sum(axis=1), DEPTH) for s in mine]
        for mine in merged
    ]


def per_query(rank: np.ndarray) -> dict[str, np.ndarray]:
    """MEASURES per query from the relevant passage's rank."""
    return {"R@1": (rank < 1).astype(float), "RR@10": np.where(rank < 10, 1.0 / (rank + 1), 0.0)}


def macro(values: np.ndarray, langs: np.ndarray) -> float:
    """Mean over languages of each language's mean (the headline's macro average)."""
    return float(np.mean([values[langs == lang].mean() for lang in np.unique(langs)]))


@dataclass
class Split:
    """The dev and test queries of a run's headline setting (cross-lingual languages only)."""

    dev: Queries
    test: Queries
    groups: dict[str, str]
    setting: str


def read_queries(cfg: RunConfig) -> Split:
    """Dev and test query vectors, cross-lingual and judged, each with its one relevant pid."""
    if cfg.tuning.dev_fraction <= 0:
        raise ConfigError("the frontier chooses alpha on dev: set tuning.dev_fraction > 0")
    paths = RunPaths(cfg.root)
    vectors = PartitionedTable(paths.embeddings(cfg.encoder.name, "queries")).read(
        columns=["qid", "lang", "vector"]
    )
    langs = sorted(set(vectors["lang"].to_pylist()))
    setting = resolve_setting(cfg.evaluate.settings[0], langs, passage_languages(cfg))
    searched = {query: tuple(targets) for query, targets in setting.pairs}
    cross = [q for q in searched if q not in monolingual_languages(setting)]
    vectors = vectors.filter(pc.is_in(vectors["lang"], pa.array(cross, pa.string())))
    collection = PartitionedTable(paths.collection).read(columns=["pid", "lang"])
    qrels = read_table(paths.corpus("qrels"))
    qrels = qrels.filter(pc.greater(qrels["relevance"], 0)).join(collection, "pid")
    roles = run_roles(cfg)

    def split(role: str) -> Queries:
        table = with_role(vectors, roles, [role])
        mine = qrels.filter(pc.is_in(qrels["qid"], table["qid"]))
        lang_of = dict(zip(table["qid"].to_pylist(), table["lang"].to_pylist(), strict=True))
        relevant: dict[str, list[str]] = {}
        for qid, pid, lang in zip(
            *(mine[c].to_pylist() for c in ("qid", "pid", "lang")), strict=True
        ):
            if lang in searched[lang_of[qid]]:
                relevant.setdefault(qid, []).append(pid)
        if any(len(pids) > 1 for pids in relevant.values()):
            raise ConfigError("the frontier scores queries with one relevant passage each")
        keep = pa.array([q in relevant for q in table["qid"].to_pylist()])
        table = table.filter(keep)
        qids = table["qid"].to_pylist()
        return Queries(
            qids=qids,
            langs=np.asarray(table["lang"].to_pylist(), dtype=object),
            vectors=arrow_to_vectors(table["vector"]),
            relevant=np.asarray([relevant[q][0] for q in qids], dtype=object),
            searched=searched,
        )

    return Split(split(DEV), split(TEST), query_group_map(cfg), setting.name)


def alpha_grid(cfg: RunConfig) -> list[Variant]:
    """tuning's grid without alpha 0 (dense): every (reduce, alpha) of `tuning`."""
    return [("xqg", r, a) for r in cfg.tuning.reduces for a in cfg.tuning.alphas if a > 0]


def choose_and_test(
    cfg: RunConfig, split: Split, planner: Planner, count: int, label: str
) -> list[dict[str, Any]]:
    """For each of the planner's `count` mixes: xqg's (reduce, alpha) chosen on dev by R@1
    (macro over languages, the smaller alpha on a tie), then xqg at the choice and multivector
    on test against dense, paired over question groups (`paired.py`)."""
    grid = alpha_grid(cfg)
    dev = ranks(cfg, split.dev, planner, [grid] * count, f"{label} (dev)")
    chosen = []
    for mine in dev:
        values = [macro(per_query(rank)["R@1"], split.dev.langs) for rank in mine]
        best = max(range(len(grid)), key=lambda i: (values[i], -grid[i][2]))
        chosen.append((grid[best], values[best]))
    variants = [[DENSE, choice, ("multivector", "", 0.0)] for choice, _ in chosen]
    test = ranks(cfg, split.test, planner, variants, f"{label} (test)")
    out = []
    for (choice, dev_value), (dense, xqg, multi) in zip(chosen, test, strict=True):
        base = per_query(dense)
        row: dict[str, Any] = {
            "reduce": choice[1],
            "alpha": choice[2],
            "dev_R@1": dev_value,
            "dense": {m: macro(v, split.test.langs) for m, v in base.items()},
        }
        for name, rank in (("xqg", xqg), ("multivector", multi)):
            values = per_query(rank)
            row[name] = {
                m: {
                    "value": macro(values[m], split.test.langs),
                    **paired_test(
                        dict(zip(split.test.qids, values[m], strict=True)),
                        dict(zip(split.test.qids, base[m], strict=True)),
                        split.groups,
                    ),
                }
                for m in MEASURES
            }
        out.append(row)
    return out


def test_label(split: Split) -> str:
    """What every figure of a re-mix is measured on."""
    groups = len({split.groups.get(q, q) for q in split.test.qids})
    return (
        f"question-split stand-in; test split, {len(split.test.qids):,} cross-lingual queries; "
        f"unit of the paired tests: question group (n = {groups:,})"
    )
