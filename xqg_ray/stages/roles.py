"""Which role each query of a run plays: stand-in generation, dev (tuning) or test (reported).

One function, so the generate stage, the plan, the evaluation and the tuning read the same split
(`datasets/splits.py`).
"""

from __future__ import annotations

from xqg_ray.config import RunConfig
from xqg_ray.datasets.splits import query_roles
from xqg_ray.paths import RunPaths
from xqg_ray.storage import read_table

SPLIT_VERSION = 2  # bump when the assignment changes: a run root planned before is refused


def uses_standin(cfg: RunConfig) -> bool:
    return cfg.generator.backend == "question_split"


def run_roles(cfg: RunConfig) -> dict[str, str]:
    """qid -> generation | dev | test for every query of the run's corpus."""
    paths = RunPaths(cfg.root)
    return query_roles(
        read_table(paths.corpus("queries")),
        read_table(paths.corpus("qrels")),
        cfg.split.fraction if uses_standin(cfg) else None,
        cfg.tuning.dev_fraction,
        cfg.split.seed,
    )


def split_meta(cfg: RunConfig) -> dict | None:
    """What the planned query set depends on (dev and test are both in it)."""
    if not uses_standin(cfg):
        return None
    return {**cfg.split.model_dump(), "version": SPLIT_VERSION}
