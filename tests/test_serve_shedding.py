"""Load shedding over real HTTP on loopback: a burst past a small `max_queued_requests` is
answered 503 with `Retry-After` and a JSON body naming the setting, every accepted answer is
exact, and the service answers normally once the burst is over (the overload bench, small)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xqg_ray.bench.serve_overload import main
from xqg_ray.index import build_shards
from xqg_ray.serve.app import SHED_HEADROOM, router_queueing
from xqg_ray.serve.config import ServeConfig


def test_router_queueing_bounds_both_queues_unless_unbounded():
    options = router_queueing(ServeConfig(index="x", max_queued_requests=4, retry_after_s=2))
    assert options["max_ongoing_requests"] == 4 + SHED_HEADROOM
    assert options["max_queued_requests"] == 4 + SHED_HEADROOM  # the proxy's backstop
    assert options["backpressure_config"].retry_after_s == 2
    assert router_queueing(ServeConfig(index="x", max_queued_requests=-1)) == {
        "max_ongoing_requests": 128
    }


@pytest.mark.ray
def test_a_burst_past_the_queue_limit_is_shed_with_retry_after(tmp_path):
    rng = np.random.default_rng(0)
    index = str(tmp_path / "index")
    build_shards(rng.standard_normal((2000, 16)).astype(np.float32), np.arange(2000), index)
    out = tmp_path / "overload.json"
    argv = ["--out", str(out), "--index", index, "--large-n", "0", "--levels", "1,64"]
    argv += ["--min-requests", "40", "--requests-per-client", "4", "--timeout-s", "10"]
    argv += ["--recovery-s", "2", "--settle-max-s", "10", "--warmup", "5", "--distinct", "16"]
    argv += ["--set", "max_queued_requests=2", "--set", "retry_after_s=1"]
    result = main(argv)
    assert json.loads(out.read_text())["indexes"] == result["indexes"]
    (served,) = result["indexes"]
    assert served["checked"] and served["no_crash"], served
    unloaded, burst = served["levels"]
    assert unloaded["accepted"] == unloaded["sent"] == 40 and unloaded["shed"] == 0
    assert burst["sent"] == 256 and burst["timeout"] == 0 and burst["error"] == 0, burst
    assert burst["shed"] > 0 and burst["accepted"] > 0, burst
    assert burst["shed_with_retry_after"] == burst["shed"]  # every 503 says when to retry
    assert burst["shed_json"] > 0, burst  # the router's own 503s: the API's error shape
    example = burst["shed_example"]
    assert example["retry_after"] == "1"
    if example["body"] is not None:  # a router 503 (the proxy's backstop answers in text)
        assert "max_queued_requests" in example["body"]["detail"]
    assert unloaded["wrong"] == burst["wrong"] == 0  # accepted answers are the exact ones
    recovery = burst["recovery"]
    assert recovery["probes"] > 0 and recovery["probes_ok"] == recovery["probes"], recovery
