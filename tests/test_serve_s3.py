"""The search service over an index whose run root is on S3 (a moto server on loopback)."""

from __future__ import annotations

import numpy as np
import pytest
from ray import serve

from xqg_ray.index.in_process import InProcessIndex
from xqg_ray.index.shards import IndexSpec, build_shards
from xqg_ray.serve.client import SearchClient
from xqg_ray.serve.config import ServeConfig
from xqg_ray.serve.local import free_port, run_server


@pytest.fixture
def ray_after_s3(local_ray):
    """The shared Ray was started after the S3 server: replicas inherit its endpoint."""
    yield
    serve.shutdown()


def test_service_serves_an_index_from_s3_exactly(s3_bucket, ray_after_s3, tmp_path):
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    ids = np.arange(1000, 1300, dtype=np.int64)
    pids = [f"p{i}" for i in range(300)]
    index_url = f"{s3_bucket}/run/index/enc/dense"
    build_shards(vectors, ids, index_url, IndexSpec(shards=3), pids=pids)

    url = run_server(
        ServeConfig(index=index_url, port=free_port(), local_dir=str(tmp_path / "shards")),
        blocking=False,
    )
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    answer = SearchClient(url).search_vectors(queries, k=120)  # k beyond any one shard (100)

    expected_scores, expected_ids = InProcessIndex(index_url).search(queries, 120)
    exact = vectors @ queries.T
    assert not answer["partial"]
    for row, hits in enumerate(answer["results"]):
        assert [h["id"] for h in hits] == expected_ids[row].tolist()
        np.testing.assert_allclose([h["score"] for h in hits], expected_scores[row], rtol=1e-5)
        # and both equal brute force over all 300 vectors
        top = np.argsort(-exact[:, row], kind="stable")[:120]
        assert sorted(h["id"] for h in hits) == sorted(ids[top].tolist())
        assert hits[0]["pid"] == pids[int(top[0])]
