"""Generator-quality sensitivity: the stand-in degraded in controlled, seeded ways.

At the build's n, in every generated language, a fraction q of each passage's queries is
replaced (the same rows at a larger q: the replaced set grows, ordered by SHA-256 of
`seed:pid:lang:k`) by
- `off-topic`: a stored generated query of the same language drawn (seeded) from a passage of
  another paragraph (two passages share a paragraph when a question is relevant to both) in
  the same collection part;
- `wrong-language`: the English translation of the same generation-split question, encoded with
  the run's encoder in the part's task.
Both draw only generation-split questions: never a dev or test question. xqg's reduce and alpha
are chosen on dev at every (kind, q), then scored on test (`remix.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.config import RunConfig
from xqg_ray.console import stage
from xqg_ray.datasets.splits import GENERATION, seed_digest
from xqg_ray.evaluate.figures import png_bytes
from xqg_ray.evaluate.remix import (
    Mix,
    Part,
    choose_and_test,
    read_part,
    read_queries,
    test_label,
)
from xqg_ray.paths import RunPaths
from xqg_ray.schema import arrow_to_vectors, vectors_to_arrow
from xqg_ray.stages.roles import run_roles
from xqg_ray.stages.runner import tasks_in_order
from xqg_ray.storage import PartitionedTable, read_table

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
KINDS = ("off-topic", "wrong-language")
ENGLISH = "en"


def replaced(part: Part, rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Of `rows`, those replaced at `fraction`: per passage, the first round(q x count) in a
    seeded order, so a larger q replaces a superset."""
    keys = [
        seed_digest(seed, f"{part.pids[part.row_passage[r]]}:{part.row_lang[r]}:{part.row_k[r]}")
        for r in rows
    ]
    order = sorted(range(len(rows)), key=lambda i: (part.row_passage[rows[i]], keys[i]))
    passages = part.row_passage[rows][order]
    counts = np.bincount(passages, minlength=len(part.pids))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - starts[passages]
    take = rank < np.round(fraction * counts[passages])
    return np.sort(rows[np.asarray(order, np.int64)[take]])


def offtopic_donors(
    part: Part, rows: np.ndarray, paragraph: Mapping[str, str], seed: int
) -> np.ndarray:
    """For each of `rows`, a stored row of the same language whose passage is of another
    paragraph, drawn uniformly (seeded)."""
    rng = np.random.default_rng(int.from_bytes(seed_digest(seed, "off-topic")[:8], "big"))
    para = np.array([paragraph.get(pid, pid) for pid in part.pids], dtype=object)
    row_para = para[part.row_passage]
    donors = np.empty(len(rows), np.int64)
    for lang in np.unique(part.row_lang[rows]):
        mine = rows[part.row_lang[rows] == lang]
        pool = np.flatnonzero(part.row_lang == lang)
        picks = pool[rng.integers(0, len(pool), len(mine))]
        for _ in range(1000):
            same = row_para[picks] == row_para[mine]
            if not same.any():
                break
            picks[same] = pool[rng.integers(0, len(pool), int(same.sum()))]
        else:
            raise ValueError(f"no off-topic {lang} query: one paragraph in this part")
        donors[np.searchsorted(rows, mine)] = picks
    return donors


@dataclass(frozen=True)
class DegradePlanner:
    """The part's mixes at each (kind, q), all generated languages, the build's n."""

    points: tuple[tuple[str, float], ...]
    n: int
    query_langs: tuple[str, ...]
    paragraph: Mapping[str, str]  # pid -> paragraph key (pids absent: their own)
    english: Mapping[tuple[str, str, str], str]  # (pid, lang, text) -> English translation
    seed: int

    def degraded(self, part: Part, kind: str, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """The kept rows and, per row, its replacement: a row index, or for wrong-language
        (negative) -1 - index into `english_texts(part)`."""
        rows = np.flatnonzero(part.row_k < self.n)
        swap = replaced(part, rows, fraction, self.seed)
        source = rows.copy()
        where = np.searchsorted(rows, swap)
        if kind == "off-topic":
            source[where] = offtopic_donors(part, swap, self.paragraph, self.seed)
        else:
            texts = self.english_texts(part)
            index = {text: i for i, text in enumerate(texts)}
            source[where] = [-1 - index[self.translation(part, r)] for r in swap]
        return rows, source

    def translation(self, part: Part, row: int) -> str:
        key = (part.pids[part.row_passage[row]], part.row_lang[row], part.row_text[row])
        if key not in self.english:
            raise ValueError(f"{key}: not a generation-split question with an English version")
        return self.english[key]

    def english_texts(self, part: Part) -> list[str]:
        rows = np.flatnonzero(part.row_k < self.n)
        return sorted({self.translation(part, r) for r in rows})

    def texts(self, part: Part, kind: str, fraction: float) -> list[str]:
        """The query texts the passages fold in at (kind, q): what a test can check."""
        _, source = self.degraded(part, kind, fraction)
        english = self.english_texts(part) if kind == "wrong-language" else []
        return [part.row_text[s] if s >= 0 else english[-1 - s] for s in source]

    def __call__(self, cfg: RunConfig, part: Part) -> list[Mix]:
        extra = len(part.bank)
        if any(kind == "wrong-language" for kind, _ in self.points):
            table = PartitionedTable(english_url(cfg)).read_part(part.name)
            if table["text"].to_pylist() != self.english_texts(part):
                raise ValueError(f"part {part.name}: the encoded English questions are stale")
            part.bank = np.concatenate([part.bank, arrow_to_vectors(table["vector"])])
        languages = sorted(set(part.row_lang))
        mixes = []
        for kind, fraction in self.points:
            rows, source = self.degraded(part, kind, fraction)
            vector = np.where(source >= 0, source, extra - 1 - source)
            mixes.append(
                Mix(
                    passage=part.row_passage[rows],
                    vector=vector,
                    lang=part.row_lang[rows],
                    languages=dict.fromkeys(self.query_langs, languages),
                )
            )
        return mixes


def english_url(cfg: RunConfig) -> str:
    """Where the wrong-language questions' vectors are written, part by part."""
    return RunPaths(cfg.root).embeddings(cfg.encoder.name, "sensitivity-english")


def encode_english(cfg: RunConfig, name: str, planner: DegradePlanner) -> int:
    """A task: encode part `name`'s English questions once, for both rounds of the re-mix."""
    from xqg_ray.models.encoder import load_encoder

    texts = planner.english_texts(read_part(cfg, name))
    vectors = load_encoder(cfg.encoder).encode_queries(texts)
    table = pa.table({"text": pa.array(texts, pa.string())}).append_column(
        "vector", vectors_to_arrow(np.asarray(vectors, np.float32))
    )
    PartitionedTable(english_url(cfg)).write_part(name, table)
    return len(texts)


def paragraphs(cfg: RunConfig) -> dict[str, str]:
    """pid -> the smallest pid sharing a relevant question with it (judged pids only)."""
    qrels = read_table(RunPaths(cfg.root).corpus("qrels"))
    qrels = qrels.filter(pc.greater(qrels["relevance"], 0)).select(["qid", "pid"])
    first = qrels.group_by("qid").aggregate([("pid", "min")])
    joined = qrels.join(first, "qid").group_by("pid").aggregate([("pid_min", "min")])
    return dict(zip(joined["pid"].to_pylist(), joined["pid_min_min"].to_pylist(), strict=True))


def translations(cfg: RunConfig) -> dict[tuple[str, str, str], str]:
    """(relevant pid, lang, text) of each generation-split question -> its group's English text."""
    paths = RunPaths(cfg.root)
    queries = read_table(paths.corpus("queries"))
    roles = run_roles(cfg)
    keep = pa.array([roles.get(q) == GENERATION for q in queries["qid"].to_pylist()])
    queries = queries.filter(keep)
    english = queries.filter(pc.equal(queries["lang"], ENGLISH))
    by_group = dict(zip(english["group"].to_pylist(), english["text"].to_pylist(), strict=True))
    collection = PartitionedTable(paths.collection).read(columns=["pid"])
    qrels = read_table(paths.corpus("qrels"))
    qrels = qrels.filter(pc.is_in(qrels["pid"], collection["pid"]))
    joined = qrels.join(queries.select(["qid", "lang", "text", "group"]), "qid", join_type="inner")
    return {
        (pid, lang, text): by_group[group]
        for pid, lang, text, group in zip(
            *(joined[c].to_pylist() for c in ("pid", "lang", "text", "group")), strict=True
        )
        if group in by_group and lang != ENGLISH
    }


def break_even(rows: list[dict[str, Any]], measure: str = "R@1") -> float | None:
    """The first q where the CI's lower bound is at or below zero (None: never)."""
    for row in rows:
        if row["xqg"][measure]["ci"][0] <= 0:
            return row["q"]
    return None


def run_sensitivity(cfg: RunConfig) -> dict[str, Any]:
    """Every (kind, q): dev choice, test gains of xqg (and multivector) with CIs."""
    split = read_queries(cfg)
    points = tuple((kind, q) for kind in KINDS for q in FRACTIONS)
    planner = DegradePlanner(
        points,
        cfg.augment.queries_per_language or cfg.generator.queries_per_language,
        tuple(split.test.searched),
        paragraphs(cfg),
        translations(cfg),
        cfg.split.seed,
    )
    parts = sorted(PartitionedTable(RunPaths(cfg.root).collection).manifest()["parts"])
    calls = [(encode_english, cfg, name, planner) for name in parts]
    with stage("sensitivity (encode English)", len(calls), "part", cfg.ray.progress_bars) as step:
        for count in tasks_in_order(cfg.ray, calls):
            step(count)
    scored = choose_and_test(cfg, split, planner, len(points), "sensitivity")
    out: dict[str, Any] = {"label": test_label(split), "n": planner.n, "kinds": {}}
    for kind in KINDS:
        rows = [{"q": q, **row} for (k, q), row in zip(points, scored, strict=True) if k == kind]
        out["kinds"][kind] = {
            "rows": rows,
            "break_even_R@1": break_even(rows),
            "break_even_RR@10": break_even(rows, "RR@10"),
        }
    return out


def table(result: dict[str, Any]) -> list[str]:
    """One row per q: dR@1 [CI] per kind (dev-chosen xqg against dense, test)."""
    lines = ["q      " + "".join(f"{kind + ' dR@1 [95% CI]':<32}" for kind in KINDS)]
    for i, q in enumerate(FRACTIONS):
        cells = []
        for kind in KINDS:
            test = result["kinds"][kind]["rows"][i]["xqg"]["R@1"]
            cells.append(f"{test['delta']:+.3f} [{test['ci'][0]:+.3f}, {test['ci'][1]:+.3f}]")
        lines.append(f"{q:<7g}" + "".join(f"{c:<32}" for c in cells))
    for kind in KINDS:
        lines.append(f"{kind}: {break_even_text(result['kinds'][kind])}")
    return lines


def break_even_text(kind: dict[str, Any]) -> str:
    q, mrr = kind["break_even_R@1"], kind["break_even_RR@10"]
    if q == FRACTIONS[0]:
        text = "the R@1 CI includes zero already at q = 0 (no significant R@1 gain to lose)"
    elif q is None:
        text = "the R@1 CI stays above zero up to q = 1"
    else:
        text = f"break-even q = {q:g} (the R@1 CI's lower bound first reaches zero)"
    more = "never" if mrr is None else f"q = {mrr:g}"
    return f"{text}; on MRR@10: {more}"


def plot_png(result: dict[str, Any]) -> bytes:
    """dR@1 vs dense (95% CI) against the replaced fraction q, one line per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.8, 3.6))
    for i, kind in enumerate(KINDS):
        rows = result["kinds"][kind]["rows"]
        q = [r["q"] + (i - 0.5) * 0.01 for r in rows]
        d = [r["xqg"]["R@1"]["delta"] for r in rows]
        err = np.array(
            [
                [v - r["xqg"]["R@1"]["ci"][0], r["xqg"]["R@1"]["ci"][1] - v]
                for r, v in zip(rows, d, strict=True)
            ]
        ).T
        ax.errorbar(q, d, yerr=err, fmt="o-", capsize=2, markersize=4, label=f"xqg, {kind}")
    ax.axhline(0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("fraction q of each passage's queries replaced")
    ax.set_ylabel("test dR@1 vs dense (95% CI)")
    ax.set_title(result["label"], fontsize=7)
    ax.legend(fontsize=8)
    return png_bytes(fig)
