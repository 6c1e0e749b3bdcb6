"""Question-group roles: generation (the stand-in's queries), dev (tuning) and test (reported).

Parallel translations of one question form a group, and a group has one role, so no translation of
a test question is ever folded into an index or used to choose a setting. The split is stratified
per paragraph: a paragraph with two or more groups gives at least one to generation and one to
evaluation, and dev takes every k-th evaluated group in a seeded paragraph order, so dev and test
both cover the whole corpus. Assignment depends only on ids and the seed, never on row order.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

GENERATION, DEV, TEST = "generation", "dev", "test"


def seed_digest(seed: int, text: str) -> bytes:
    return hashlib.sha256(f"{seed}:{text}".encode()).digest()


def unit_interval(seed: int, text: str) -> float:
    """A deterministic draw in [0, 1) for `text`: the same on every machine and in every order."""
    return int.from_bytes(seed_digest(seed, text)[:8], "big") / 2**64


def query_groups(queries: pa.Table) -> dict[str, str]:
    """qid -> group; a query without a `group` column or value is its own group."""
    qids = queries["qid"].to_pylist()
    if "group" not in queries.column_names:
        return {qid: qid for qid in qids}
    return {
        qid: group or qid for qid, group in zip(qids, queries["group"].to_pylist(), strict=True)
    }


def group_strata(groups: dict[str, str], qrels: pa.Table) -> dict[str, str]:
    """group -> its paragraph (the smallest relevant pid of its queries); unjudged: itself."""
    relevant = qrels.filter(pc.greater(qrels["relevance"], 0))
    strata: dict[str, str] = {}
    for qid, pid in zip(relevant["qid"].to_pylist(), relevant["pid"].to_pylist(), strict=True):
        group = groups.get(qid)
        if group is not None and (group not in strata or pid < strata[group]):
            strata[group] = pid
    return {group: strata.get(group, group) for group in set(groups.values())}


def assign_roles(
    strata: dict[str, str],
    generation_fraction: float | None,
    dev_fraction: float,
    seed: int,
) -> dict[str, str]:
    """group -> generation | dev | test.

    `generation_fraction` None: no generation split (a real generator). Per paragraph,
    round(n * fraction) groups go to generation, clamped to [1, n - 1] when n >= 2; a paragraph
    with one group sends it to generation with probability `fraction`. Of the evaluated groups,
    taken paragraph by paragraph in a seeded order, every group at which
    floor(i * dev_fraction) steps up goes to dev.
    """
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for group, stratum in strata.items():
        by_stratum[stratum].append(group)
    roles: dict[str, str] = {}
    evaluated: list[str] = []
    for stratum in sorted(by_stratum, key=lambda s: seed_digest(seed, "stratum:" + s)):
        groups = sorted(by_stratum[stratum], key=lambda g: seed_digest(seed, "group:" + g))
        take = 0
        if generation_fraction is not None:
            if len(groups) >= 2:
                take = min(max(round(len(groups) * generation_fraction), 1), len(groups) - 1)
            else:
                take = int(unit_interval(seed, "single:" + groups[0]) < generation_fraction)
        roles.update(dict.fromkeys(groups[:take], GENERATION))
        evaluated.extend(groups[take:])
    for i, group in enumerate(evaluated):
        stepped = math.floor((i + 1) * dev_fraction) > math.floor(i * dev_fraction)
        roles[group] = DEV if stepped else TEST
    return roles


def query_roles(
    queries: pa.Table,
    qrels: pa.Table,
    generation_fraction: float | None,
    dev_fraction: float,
    seed: int,
) -> dict[str, str]:
    """qid -> role, through each query's group (see `assign_roles`)."""
    groups = query_groups(queries)
    roles = assign_roles(group_strata(groups, qrels), generation_fraction, dev_fraction, seed)
    return {qid: roles[group] for qid, group in groups.items()}


def with_role(table: pa.Table, roles: dict[str, str], keep: Iterable[str]) -> pa.Table:
    """Rows of `table` (with a qid column) whose query has one of the roles in `keep`."""
    wanted = set(keep)
    mask = [roles.get(qid) in wanted for qid in table["qid"].to_pylist()]
    return table.filter(pa.array(mask, type=pa.bool_()))
