"""Published figures a run is read beside: a reference point, never a comparison a test asserts.

Today one benchmark has them: XQuAD-R, LAReQA's X->X retrieval (every question, in each of its 11
languages, searches one pool of the answer sentences of all 11 languages). The report prints this
run's mAP@20 beside LAReQA's mBERT baselines and says what differs (docs/benchmarks.md,
"XQuAD-R beside LAReQA's published baselines").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xqg_ray.evaluate.tables import delta_text

XQUAD_R = "xquad_r"
XQUAD_R_MEASURE = "mAP@20"
LAREQA_SOURCE = (
    "LAReQA (Roy et al., 2020, arXiv:2004.05484), baselines table of the dataset's README, "
    "github.com/google-research-datasets/lareqa"
)


@dataclass(frozen=True)
class PublishedRow:
    system: str
    value: float
    trained_on: str


# mBERT-base dual encoders fine-tuned on retrieval versions of SQuAD v1.1 and its translations.
LAREQA_MBERT = (
    PublishedRow("mBERT En-En", 0.29, "English SQuAD v1.1 question-answer pairs"),
    PublishedRow("mBERT X-X", 0.23, "translated pairs, question and answer in one language"),
    PublishedRow("mBERT X-X-mono", 0.52, "as X-X, each training batch in one language"),
    PublishedRow("mBERT X-Y", 0.66, "translated pairs, question and answer in any two languages"),
)


def xquad_r_section(
    rows: dict[str, dict[str, Any]], evaluation: dict[str, Any] | None
) -> list[str]:
    """The report's XQuAD-R section: this run's mAP@20 per variant beside LAReQA's mBERT rows,
    with every difference between the two stated. Empty for any other dataset."""
    if not evaluation or evaluation["config"]["dataset"]["name"] != XQUAD_R:
        return []
    if XQUAD_R_MEASURE not in evaluation["measures"]:
        return []
    lines = [
        "## XQuAD-R beside LAReQA's published baselines",
        "",
        f"LAReQA's X->X setting: each of this run's {evaluation['judged_queries']:,} test "
        f"questions searches one pool of {evaluation['passages']:,} answer sentences in "
        f"{len(evaluation['config']['generator']['languages'])} languages and is relevant to its "
        f"answer sentence in every language; {XQUAD_R_MEASURE} as XTREME-R computes it (precision "
        "at each relevant sentence in the top 20, over min(relevant, 20)).",
        "",
        f"| system | encoder | {XQUAD_R_MEASURE} (Δ dense [CI], p) | questions scored |",
        "|---|---|---|---|",
    ]
    effects = {name: (row["effect"] or {}).get(XQUAD_R_MEASURE) for name, row in rows.items()}
    # the baseline has no paired test of its own: its groups are those its deltas were tested on
    groups = max((effect.get("n") or 0 for effect in effects.values() if effect), default=0)
    for name, effect in effects.items():
        if not effect:
            continue
        cell = f"{effect['value']:.3f}"
        if name != "dense" and effect["p"] is not None:
            cell += f" ({delta_text(effect['delta'], effect)})"
        lines.append(
            f"| this run: `{name}` | {evaluation['encoder']} | {cell} | test split "
            f"({effect.get('n') or groups or '?'} question groups) |"
        )
    for published in LAREQA_MBERT:
        lines.append(
            f"| LAReQA: {published.system} | mBERT-base, fine-tuned on {published.trained_on} "
            f"| {published.value:.2f} (published mAP) | all 1,190 x 11 |"
        )
    lines += [
        "",
        f"Source of the published rows: {LAREQA_SOURCE}. They are a reference point, not a "
        "comparison:",
        "",
        f"- **Encoder.** This run encodes with `{evaluation['encoder']}`, trained contrastively on "
        "multilingual text pairs before any fine-tuning; LAReQA's rows are mBERT-base fine-tuned "
        "as a QA dual encoder on SQuAD v1.1 or its machine translations.",
        "- **Questions.** This run scores only its test groups: half of the question groups "
        "stand in for generated queries (the generation split) and a share of the rest chose "
        "xqg's alpha and reduce (dev). LAReQA scores every question.",
        "- **Measure.** LAReQA's README gives mAP over the whole ranking; mAP@20 stops at rank "
        "20, so for the same ranking it is at most the full mAP.",
        "- **Queries.** `xqg`, `expand` and `multivector` use human questions of the generation "
        "split as generated queries: an upper bound for a perfect generator (see the caveats).",
        "",
    ]
    return lines
