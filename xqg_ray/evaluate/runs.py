"""Run tables: ranked (qid, pid, score, rank) rows, their comparison, and TREC files.

Every way of searching for the evaluation (offline, through the service, re-mixed in tuning) ends
in the same run table; `compare_runs` and `run_differences` hold the one rule for when two runs
rank the same (same pids per query, scores within `SCORE_TOLERANCE`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from xqg_ray.errors import XqgError
from xqg_ray.storage import join, write_bytes_atomic

RUN_SCHEMA = pa.schema(
    [("qid", pa.string()), ("pid", pa.string()), ("score", pa.float32()), ("rank", pa.int32())]
)
SCORE_TOLERANCE = 1e-3  # offline and service encode queries in different batches: float noise
# bf16 and int8 engines: a query's vector moves with its batch's padding (cosine >= 0.9999 on the
# e5 export), so scores move by up to about 1e-3 and near-tied passages may swap places.
REDUCED_PRECISION_TOLERANCE = 5e-3

Ranking = tuple[list[str], list[float]]  # one query's pids and scores, best first


def run_table(qids: list[str], scores: np.ndarray, pids: list[list[str | None]]) -> pa.Table:
    """Flatten (n, k) results to run rows; slots a short index could not fill (-1) are dropped."""
    out_qid, out_pid, out_score, out_rank = [], [], [], []
    for qid, row_scores, row_pids in zip(qids, scores, pids, strict=True):
        rank = 0
        for score, pid in zip(row_scores, row_pids, strict=True):
            if pid is None:
                continue
            rank += 1
            out_qid.append(qid)
            out_pid.append(pid)
            out_score.append(float(score))
            out_rank.append(rank)
    return pa.table([out_qid, out_pid, out_score, out_rank], schema=RUN_SCHEMA)


def sorted_run(run: pa.Table) -> pa.Table:
    """One canonical row order (qid, rank), whatever order the batches finished in."""
    return run.sort_by([("qid", "ascending"), ("rank", "ascending")])


def compare_runs(expected: pa.Table, actual: pa.Table, what: str) -> int:
    """Raise unless both runs rank the same pids for every query with scores within 1e-3;
    the error names the first query that differs. Returns the number of queries compared."""
    differences = run_differences(expected, actual)
    if differences:
        raise XqgError(f"{what}: {differences[min(differences)]}")
    return len(_by_query(expected))


def run_differences(
    expected: pa.Table,
    actual: pa.Table,
    score_tolerance: float = SCORE_TOLERANCE,
    tie_tolerance: float = 0.0,
) -> dict[str, str]:
    """qid -> how the two runs first differ for it, for every query they do not rank the same
    (a query with no rows in either run is not compared). With `tie_tolerance`, two passages may
    swap places when the first run scores them within that much of each other (near ties under
    reduced-precision engines); without it the pids must be identical."""
    want, got = _by_query(expected), _by_query(actual)
    out = {}
    for qid in want.keys() | got.keys():
        if qid not in got or qid not in want:
            side = "second" if qid not in got else "first"
            out[qid] = f"query {qid!r} has no results in the {side} run"
        elif (
            difference := _ranking_difference(
                qid, want[qid], got[qid], score_tolerance, tie_tolerance
            )
        ) is not None:
            out[qid] = difference
    return out


def _swaps_are_ties(want: Ranking, got: Ranking, tolerance: float) -> bool:
    """Every passage `got` ranks where `want` has another one scores (in `want`, or in `got`
    when `want` cut it off) within `tolerance` of the passage `want` has there."""
    (want_pids, want_scores), (got_pids, got_scores) = want, got
    if len(want_pids) != len(got_pids):
        return False
    where = {pid: i for i, pid in enumerate(want_pids)}
    for rank, pid in enumerate(got_pids):
        if pid == want_pids[rank]:
            continue
        score = want_scores[where[pid]] if pid in where else got_scores[rank]
        if abs(score - want_scores[rank]) > tolerance:
            return False
    return True


def _ranking_difference(
    qid: str, want: Ranking, got: Ranking, score_tolerance: float, tie_tolerance: float
) -> str | None:
    (want_pids, want_scores), (got_pids, got_scores) = want, got
    tied = tie_tolerance > 0 and _swaps_are_ties(want, got, tie_tolerance)
    if want_pids != got_pids and not tied:
        rank = next(
            (i for i, (a, b) in enumerate(zip(want_pids, got_pids, strict=False)) if a != b),
            min(len(want_pids), len(got_pids)),
        )
        return (
            f"query {qid!r} ranks differently from rank {rank + 1}: "
            f"{want_pids[rank : rank + 3]} vs {got_pids[rank : rank + 3]} "
            f"({len(want_pids)} vs {len(got_pids)} passages)"
        )
    gaps = np.abs(np.asarray(want_scores) - np.asarray(got_scores))
    if len(gaps) and gaps.max() > score_tolerance:
        rank = int(gaps.argmax())
        return (
            f"query {qid!r}: the score at rank {rank + 1} differs by "
            f"{gaps[rank]:.2e} ({want_scores[rank]:.6f} vs {got_scores[rank]:.6f})"
        )
    return None


def max_score_gap(expected: pa.Table, actual: pa.Table) -> float:
    """The largest score difference at the same (query, rank) of two runs (0 when none)."""
    want, got = _by_query(expected), _by_query(actual)
    gaps = [
        abs(a - b)
        for qid in want.keys() & got.keys()
        for a, b in zip(want[qid][1], got[qid][1], strict=False)
    ]
    return max(gaps, default=0.0)


def _by_query(run: pa.Table) -> dict[str, Ranking]:
    out: dict[str, Ranking] = {}
    for row in sorted_run(run).to_pylist():
        pids, scores = out.setdefault(row["qid"], ([], []))
        pids.append(row["pid"])
        scores.append(row["score"])
    return out


def trec_run_text(run: pa.Table, tag: str) -> str:
    """The run in TREC format (`qid Q0 pid rank score tag`), readable by trec_eval and Pyserini."""
    lines = [
        f"{qid} Q0 {pid} {rank} {score:.6f} {tag}"
        for qid, pid, rank, score in zip(
            run["qid"].to_pylist(),
            run["pid"].to_pylist(),
            run["rank"].to_pylist(),
            run["score"].to_pylist(),
            strict=True,
        )
    ]
    return "\n".join(lines) + "\n"


def write_trec_run(url: str, run: pa.Table, tag: str) -> None:
    write_bytes_atomic(url, trec_run_text(run, tag).encode("utf-8"))


def write_runs(out: str, runs: dict[str, pa.Table]) -> None:
    """Each strategy's run as `<out>/<strategy>.run`."""
    for strategy, run in runs.items():
        write_trec_run(join(out, f"{strategy}.run"), run, f"xqg-ray-{strategy}")


def trec_qrels_text(qrels: pa.Table) -> str:
    """`qid 0 pid relevance` lines, the format trec_eval reads beside the run files."""
    lines = [
        f"{qid} 0 {pid} {rel}"
        for qid, pid, rel in zip(
            qrels["qid"].to_pylist(),
            qrels["pid"].to_pylist(),
            qrels["relevance"].to_pylist(),
            strict=True,
        )
    ]
    return "\n".join(lines) + ("\n" if lines else "")
