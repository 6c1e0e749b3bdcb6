"""The serve-faults bench: bounded load on loopback while replicas are killed, in every layout
(a deployment per shard, one shard group, shards in the router); every complete answer is exact,
every incomplete one flagged, and a wrong unflagged one is a failure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xqg_ray.bench.serve_faults import Tally, classify, main

pytestmark = pytest.mark.ray


def test_classify_counts_a_wrong_unflagged_answer_as_a_failure():
    exact_ids, exact_scores = [4, 9], np.array([2.0, 1.0], dtype=np.float32)

    def answer(ids, scores, partial=False, missing=()):
        hits = [{"id": i, "score": s} for i, s in zip(ids, scores, strict=True)]
        return {"results": [hits], "partial": partial, "missing_shards": list(missing)}

    assert classify(200, answer([4, 9], [2.0, 1.0]), exact_ids, exact_scores) == "succeeded"
    assert classify(200, answer([4, 7], [2.0, 1.0]), exact_ids, exact_scores) == "wrong"
    assert classify(200, answer([4, 9], [2.0, 0.5]), exact_ids, exact_scores) == "wrong"
    assert classify(200, answer([4], [2.0], True, [1]), exact_ids, exact_scores) == "partial"
    assert classify(200, answer([4], [2.0], True), exact_ids, exact_scores) == "wrong"
    assert classify(503, {"detail": "shards [1]"}, exact_ids, exact_scores) == "failed"
    tally = Tally()
    tally.record("wrong", 200, 1.0)
    tally.record("succeeded", 200, 3.0)
    summary = tally.summary(1.0)
    assert summary["failed"] == summary["wrong_unflagged"] == 1 and summary["succeeded"] == 1


LAYOUTS = {
    "per-shard": ["--shards-per-replica", "1", "--replicas", "1"],
    "one-group": ["--shards-per-replica", "2", "--replicas", "2"],  # one group, 2 twins
    "in-router": ["--search-in-router", "--router-replicas", "2"],  # a small index's default
}


DEFAULT_LAYOUT = "in-router"  # `make test` soaks the default layout; `make test-slow` the others


@pytest.mark.parametrize(
    "layout",
    [
        layout if layout == DEFAULT_LAYOUT else pytest.param(layout, marks=pytest.mark.slow)
        for layout in LAYOUTS
    ],
)
def test_killed_replicas_under_load_never_give_a_wrong_answer(tmp_path, layout):
    out = tmp_path / "faults.json"
    argv = ["--out", str(out), "--n", "3000", "--dim", "16", "--shards", "2", *LAYOUTS[layout]]
    argv += ["--requests", "240", "--concurrency", "4", "--kills", "2", "--kill-after", "0.2"]
    argv += ["--kill-every", "80", "--max-duration-s", "50", "--shard-timeout-s", "2"]
    result = main(argv)
    summary = result["result"]
    assert json.loads(out.read_text())["result"] == summary
    assert len(result["kills"]) == 2 and all(kill["replica"] for kill in result["kills"])
    assert summary["wrong_unflagged"] == 0, summary
    outcomes = summary["succeeded"] + summary["failed"] + summary["flagged_partial"]
    assert outcomes == summary["sent"] > 0
    assert summary["succeeded"] > summary["sent"] // 2, summary
    assert 0 < summary["p50_ms"] <= summary["p99_ms"]
