"""The offline stand-in for mT5: human-written questions of a disjoint split (docs/architecture.md).

No mT5 weights are reachable offline, so for a meaningful demo the questions of the generation
split (`datasets/splits.py`) stand in for generated queries: an upper bound for a perfect
generator. It keeps a real generator's shape: every passage gets exactly n queries in every
language, drawn with replacement from its held-in questions in that language and seeded by
(seed, pid, language), so the published SUM mixing sees the same count for every passage. Only a
passage with no held-in question in a language gets none (the caller reports how many).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow as pa

from xqg_ray.datasets.splits import GENERATION, seed_digest


class QuestionSplitGenerator:
    """For each passage, n draws from the generation-split questions relevant to it."""

    name = "question-split-standin"
    engine = "lookup (question-split stand-in, no model)"

    def __init__(
        self,
        queries: pa.Table,
        qrels: pa.Table,
        roles: dict[str, str],
        queries_per_language: int,
        seed: int,
    ):
        self.n = queries_per_language
        self.seed = seed
        text = dict(zip(queries["qid"].to_pylist(), queries["text"].to_pylist(), strict=True))
        lang = dict(zip(queries["qid"].to_pylist(), queries["lang"].to_pylist(), strict=True))
        pools: dict[tuple[str, str], set[str]] = defaultdict(set)
        for qid, pid, rel in zip(
            qrels["qid"].to_pylist(),
            qrels["pid"].to_pylist(),
            qrels["relevance"].to_pylist(),
            strict=True,
        ):
            if rel > 0 and roles.get(qid) == GENERATION and qid in text:
                pools[(pid, lang[qid])].add(qid)
        # sorted by qid, so the draws do not depend on the order of the input rows
        self._questions = {key: [text[q] for q in sorted(qids)] for key, qids in pools.items()}

    def generate_for(self, pids: list[str], language: str) -> list[list[str]]:
        out = []
        for pid in pids:
            pool = self._questions.get((pid, language), [])
            if not pool:
                out.append([])
                continue
            digest = seed_digest(self.seed, f"{pid}:{language}")
            rng = np.random.default_rng(int.from_bytes(digest, "big"))
            out.append([pool[i] for i in rng.integers(0, len(pool), size=self.n)])
        return out
