"""Service layouts on this 2-CPU machine, over real HTTP on loopback.

A 4-shard index (with the tiny BERT recorded as its encoder) comes up with default settings on a
2-CPU Ray and answers exactly as one IndexFlatIP over all vectors in every layout: the shards
inside the router (the default for a small index), one shard group, a deployment per shard, and
groups of two. A service that cannot fit is refused before deploying, naming the setting; a
start-up past its deadline says what is not up; `xqg-ray serve` stops on Ctrl-C.
"""

from __future__ import annotations

import signal
import time

import faiss
import numpy as np
import pytest
import requests
from ray import serve

from xqg_ray.bench.responsiveness import serving
from xqg_ray.config import EncoderConfig
from xqg_ray.errors import ConfigError
from xqg_ray.index import IndexSpec, build_shards
from xqg_ray.models.encoder import load_encoder
from xqg_ray.serve.client import SearchClient
from xqg_ray.serve.config import ServeConfig
from xqg_ray.serve.layout import check_fits, plan_layout
from xqg_ray.serve.local import free_port, run_server

pytestmark = pytest.mark.ray

N = 403  # 4 contiguous shards of 101/101/101/100
TEXTS = [f"passage {i} about topic {i % 17} and place {i % 5}" for i in range(N)]
LAYOUTS = {
    "default": {},  # a small index: the router holds the shards
    "one-group": {"search_in_router": False},
    "per-shard": {"shards_per_replica": 1},
    "groups-of-2": {"shards_per_replica": 2},
}
EXPECTED_DEPLOYMENTS = {
    "default": {"router"},
    "one-group": {"router", "shards-00000-00003"},
    "per-shard": {"router", "shard-00000", "shard-00001", "shard-00002", "shard-00003"},
    "groups-of-2": {"router", "shards-00000-00001", "shards-00002-00003"},
}


def manifest_of(sizes: list[int], encoder: dict | None = None) -> dict:
    return {
        "dimension": 8,
        "metric": "ip",
        "shards": [{"count": 1, "bytes": size} for size in sizes],
        "meta": {"encoder": encoder} if encoder else {},
    }


# ---- planning, no Ray ------------------------------------------------------------------------


def test_small_index_is_in_the_router_then_one_group_then_a_deployment_per_group():
    tiny = plan_layout(ServeConfig(index="x"), manifest_of([10_000] * 4), None)
    assert tiny.search_in_router and tiny.groups == []
    assert [r.deployment for r in tiny.reservations] == ["router"]
    assert tiny.reservations[0].memory_bytes == int(4 * 10_000 * 1.1)
    cfg = ServeConfig(index="x", search_in_router=False)
    small = plan_layout(cfg, manifest_of([10_000] * 4), None)
    assert small.groups == [[0, 1, 2, 3]]
    assert [r.deployment for r in small.reservations] == ["shards-00000-00003", "router"]
    assert small.reservations[0].memory_bytes == int(4 * 10_000 * 1.1)
    big = plan_layout(
        ServeConfig(index="x", replica_memory_mb=2500), manifest_of([2**30] * 5), None
    )
    assert big.groups == [[0, 1], [2, 3], [4]] and not big.search_in_router
    medium = plan_layout(ServeConfig(index="x"), manifest_of([2**28] * 4), None)  # 1 GiB
    assert medium.groups == [[0, 1, 2, 3]] and not medium.search_in_router
    assert ServeConfig(index="x").shards_per_replica is None


def test_default_reservations_fit_two_cpus_for_any_shard_count():
    for n_shards in (1, 4, 16, 64, 500):
        cfg = ServeConfig(index="x", shards_per_replica=1)  # the most deployments possible
        cpu_encoder = EncoderConfig(backend="hf", model="/m", device="cpu")
        layout = plan_layout(cfg, manifest_of([1000] * n_shards), cpu_encoder)
        assert layout.encode_in_router
        total = sum(r.replicas * r.num_cpus for r in layout.reservations)
        assert total <= 1.25 + 1e-9, (n_shards, total)
        check_fits(layout, {"CPU": 2.0, "memory": 8 * 2**30})


def test_a_gpu_encoder_gets_its_own_deployment_and_a_gpu():
    gpu = EncoderConfig(backend="hf", model="/m", device="cuda")
    layout = plan_layout(ServeConfig(index="x"), manifest_of([1000]), gpu)
    assert not layout.encode_in_router
    (encoder,) = [r for r in layout.reservations if r.deployment == "query-encoder"]
    assert encoder.num_gpus == 1
    with pytest.raises(ConfigError, match="encoder_num_gpus"):
        check_fits(layout, {"CPU": 2.0, "memory": 2**30})
    auto = EncoderConfig(backend="hf", model="/m", device="auto")
    assert plan_layout(ServeConfig(index="x"), manifest_of([1000]), auto).encode_in_router
    on_gpus = plan_layout(ServeConfig(index="x"), manifest_of([1000]), auto, cluster_gpus=1)
    assert not on_gpus.encode_in_router


def test_a_service_that_cannot_fit_is_refused_naming_the_setting():
    cfg = ServeConfig(index="x", shards_per_replica=1, shard_num_cpus=1.0)
    layout = plan_layout(cfg, manifest_of([1000] * 4), None)
    with pytest.raises(ConfigError, match=r"reserves 4.25 CPU .* has 2: lower shard_num_cpus"):
        check_fits(layout, {"CPU": 2.0, "memory": 2**30})
    with pytest.raises(ConfigError, match="replica_memory_mb"):
        plan_layout(
            ServeConfig(index="x", search_in_router=True, replica_memory_mb=1),
            manifest_of([2**20] * 4),
            None,
        )


# ---- Ctrl-C, before this module starts its own Ray ---------------------------------------------


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_models):
    """403 passages encoded by the tiny BERT, 4 shards, the encoder recorded in the manifest."""
    base = tmp_path_factory.mktemp("layouts")
    encoder_cfg = EncoderConfig(backend="hf", model=tiny_models["bert"], device="cpu")
    encoder = load_encoder(encoder_cfg)
    vectors = np.asarray(encoder.encode_passages(TEXTS), dtype=np.float32)
    url = str(base / "index")
    build_shards(
        vectors,
        np.arange(N, dtype=np.int64),
        url,
        IndexSpec(shards=4),
        pids=[f"p{i}" for i in range(N)],
        meta={"encoder": encoder_cfg.model_dump()},
    )
    return {"url": url, "vectors": vectors, "encoder": encoder}


def test_xqg_ray_serve_stops_on_ctrl_c(index, tmp_path):
    port = free_port()
    with serving(index["url"], tmp_path / "serve.log", port, limit_s=180) as process:
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30).json()
        assert health == {"status": "ok", "shards": 4, "encoder": True}
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)  # raises if it hangs; how fast it stops: bench/responsiveness.py
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


# ---- every layout on a 2-CPU Ray ----------------------------------------------------------------


@pytest.fixture(scope="module")
def two_cpus(local_ray):
    yield free_port()  # Serve's HTTP port: the first run_server starts Serve on it
    serve.shutdown()


def flat_top(vectors: np.ndarray, queries: np.ndarray, k: int):
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    scores, ids = exact.search(queries, k)
    return [row[row >= 0].tolist() for row in ids], [
        row[ids_row >= 0].tolist() for row, ids_row in zip(scores, ids, strict=True)
    ]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_answers_exactly_with_default_settings(index, two_cpus, layout):
    cfg = ServeConfig(index=index["url"], port=two_cpus, app_name=f"layout-{layout}")
    cfg = cfg.model_copy(update=LAYOUTS[layout])
    started = time.perf_counter()
    url = run_server(cfg, blocking=False)
    print(f"{layout}: up in {time.perf_counter() - started:.1f} s")
    try:
        deployments = set(serve.status().applications[cfg.app_name].deployments)
        assert deployments == EXPECTED_DEPLOYMENTS[layout]
        client = SearchClient(url)
        rng = np.random.default_rng(3)
        queries = rng.standard_normal((3, index["vectors"].shape[1])).astype(np.float32)
        for k in (1, 10, 102, N + 7):  # 102 exceeds every shard, N + 7 the index
            answer = client.search_vectors(queries, k=k)
            expected_ids, expected_scores = flat_top(index["vectors"], queries, k)
            assert answer["partial"] is False
            got = [[h["id"] for h in row] for row in answer["results"]]
            assert got == expected_ids, (layout, k)
            for row, scores in zip(answer["results"], expected_scores, strict=True):
                np.testing.assert_allclose([h["score"] for h in row], scores, rtol=1e-5, atol=1e-5)
            assert answer["results"][0][0]["pid"] == f"p{expected_ids[0][0]}"
        texts = ["topic 3 and place 1", "passage 250"]
        answer = client.search(texts, k=5)  # encoded inside the router (a CPU encoder)
        local = np.asarray(index["encoder"].encode_queries(texts), dtype=np.float32)
        _, expected_scores = flat_top(index["vectors"], local, 5)
        for row, scores in zip(answer["results"], expected_scores, strict=True):
            np.testing.assert_allclose([h["score"] for h in row], scores, rtol=1e-4, atol=1e-4)
        assert client.stats()["layout"]["encode_in_router"] is True
    finally:
        serve.delete(cfg.app_name)


def test_run_server_refuses_what_the_cluster_cannot_place(index, two_cpus):
    cfg = ServeConfig(index=index["url"], port=two_cpus, app_name="too-big", encode_in_router=False)
    with pytest.raises(ConfigError, match="encoder_num_cpus"):
        run_server(cfg.model_copy(update={"encoder_num_cpus": 4.0}), blocking=False)
    assert "too-big" not in serve.status().applications


def test_a_late_start_says_what_is_not_up(index, two_cpus):
    cfg = ServeConfig(index=index["url"], port=two_cpus, app_name="late", startup_timeout_s=0.05)
    with pytest.raises(ConfigError, match=r"did not come up within startup_timeout_s=0.05 s"):
        run_server(cfg, blocking=False)
    deadline = time.monotonic() + 30
    while "late" in serve.status().applications and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "late" not in serve.status().applications


def test_shard_cache_checks_each_file_once_and_refuses_a_corrupt_one(tmp_path, monkeypatch):
    from xqg_ray.errors import StorageError
    from xqg_ray.index import shard_cache
    from xqg_ray.serve.corpus import PassageLookup, passage_table

    url = str(tmp_path / "index")
    vectors = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    manifest = build_shards(
        vectors, np.arange(40), url, IndexSpec(shards=2), pids=[f"p{i}" for i in range(40)]
    )
    cache = str(tmp_path / "cache")
    hashed = []
    real = shard_cache.sha256_of
    monkeypatch.setattr(shard_cache, "sha256_of", lambda path: hashed.append(path) or real(path))
    for _ in range(3):  # three replicas on one node
        index = shard_cache.load_shard_cached(url, manifest, 1, cache)
        assert index.ntotal == 20
    assert len(hashed) == 1  # checksummed once
    lookup = PassageLookup(passage_table(url, manifest, "", cache))
    assert lookup.pids(np.array([[39, -1, 7]])) == [["p39", None, "p7"]]
    shard = tmp_path / "index" / "shard-00001.faiss"  # verified above, then replaced
    shard.write_bytes(shard.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(StorageError, match="checksum mismatch"):
        shard_cache.load_shard_cached(url, manifest, 1, cache)
