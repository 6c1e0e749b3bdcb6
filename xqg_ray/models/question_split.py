"""The offline stand-in for mT5: human-written questions of a disjoint split (DESIGN section 5).

No mT5 weights are reachable offline, so for a meaningful demo the questions of one split of the
dataset stand in for generated queries: an upper bound for a perfect generator. The evaluated
questions come from the other split only, so nothing evaluated is ever folded into an index.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import pyarrow as pa


def question_group(row: dict) -> str:
    """Parallel translations of one question share a group; without one, the query is its group."""
    return row.get("group") or row["qid"]


def in_generation_split(group: str, fraction: float, seed: int) -> bool:
    """Deterministic, order-free assignment of a question group to the generation split."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class QuestionSplitGenerator:
    """Returns, for each passage, the generation-split questions relevant to it in a language."""

    name = "question-split-standin"

    def __init__(
        self, queries: pa.Table, qrels: pa.Table, fraction: float, seed: int, max_per_language: int
    ):
        by_qid = {row["qid"]: row for row in queries.to_pylist()}
        self._questions: dict[tuple[str, str], list[str]] = defaultdict(list)
        for rel in qrels.to_pylist():
            query = by_qid.get(rel["qid"])
            if query is None or rel["relevance"] <= 0:
                continue
            if in_generation_split(question_group(query), fraction, seed):
                bucket = self._questions[(rel["pid"], query["lang"])]
                if len(bucket) < max_per_language:
                    bucket.append(query["text"])

    def generate_for(self, pids: list[str], language: str) -> list[list[str]]:
        return [list(self._questions.get((pid, language), [])) for pid in pids]
