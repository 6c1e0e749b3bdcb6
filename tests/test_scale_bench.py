"""The corpus-scale benchmark end to end at toy sizes, on a loopback S3 (moto) server: it runs
every stage with the scale stand-ins, measures the driver and the workers, counts S3 requests,
and writes its JSON."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from xqg_ray.bench.scale import main
from xqg_ray.bench.scale_models import hashing_vectors
from xqg_ray.bench.synthetic import scale_corpus


def test_synthetic_corpus_has_judged_queries_drawn_from_their_passages(tmp_path):
    files = scale_corpus(tmp_path, 1000, block=300)
    passages = pq.read_table(files["passages"])
    queries = pq.read_table(files["queries"])
    assert passages.num_rows == 1000 and len(set(passages["pid"].to_pylist())) == 1000
    assert queries.num_rows == 200
    texts = dict(zip(passages["pid"].to_pylist(), passages["text"].to_pylist(), strict=True))
    for line in (tmp_path / "qrels.txt").read_text().splitlines()[:20]:
        qid, _, pid, _ = line.split()
        query = queries.filter(queries["qid"].to_numpy(zero_copy_only=False) == qid)
        assert query["text"][0].as_py() in texts[pid]


def test_hashing_encoder_places_a_query_nearest_its_passage():
    passages = ["alpha beta gamma delta epsilon", "one two three four five six", "red green"]
    vectors = hashing_vectors(passages, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    query = hashing_vectors(["two three four"], 64)
    assert int(np.argmax(vectors @ query[0])) == 1


@pytest.mark.slow  # the benchmark script end to end (about 80 s); S3 index builds stay in
# make test through tests/test_scale_index.py
def test_scale_benchmark_on_s3_reports_every_stage(tmp_path):
    out = tmp_path / "scale.json"
    results = main(
        [
            "--sizes", "2000,4000",
            "--s3",
            "--out", str(out),
            "--workdir", str(tmp_path / "work"),
            "--passages-per-part", "500",
            "--shards", "4",
            "--nlist", "16",
        ]
    )  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    small, large = results["runs"]
    for run in (small, large):
        assert run["parts"] == run["size"] // 500
        for stage in ("ingest", "plan", "generate", "encode-passages", "encode-generated",
                      "index-dense", "index-xqg", "evaluate"):  # fmt: skip
            assert run["stage_seconds"][stage] > 0, stage
        assert run["driver_peak_rss_mb"] > 0 and run["largest_worker_peak_rss_mb"] > 0
        assert run["s3_requests"] > 0 and run["bytes_written"] > 0
        assert run["index"]["xqg"]["shards"] == 4
    assert large["size_ratio_vs_previous"] == 2 and large["time_ratio_vs_previous"] > 0
    # requests follow parts, not passages: twice the parts, at most about twice the requests
    assert large["s3_requests"] < 2.5 * small["s3_requests"]
