"""The search service over real HTTP on loopback: exactness, bad requests, failures, exposure.

Three applications run side by side on one local Ray (2 CPUs):
- `vec`: 203 random vectors in 4 shards, a deployment per shard (`shards_per_replica: 1`, one
  replica each), a bearer token, tight limits;
- `xquad`: a run root with the XQuAD English paragraphs encoded by the tiny BERT, 1 shard, the
  query encoder taken from the manifest, the corpus for include_text; the default layout of a
  small index: the router holds the shard and runs the encoder itself;
- `multi`: a multivector index in 2 shards, one shard-group deployment with 2 replicas.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow.compute as pc
import pytest
import ray
import requests
from ray import serve

from xqg_ray import storage
from xqg_ray.bench.load import http_load
from xqg_ray.config import DatasetConfig, EncoderConfig
from xqg_ray.datasets import load_corpus
from xqg_ray.index import IndexSpec, build_shards
from xqg_ray.models.encoder import load_encoder
from xqg_ray.serve.app import build_app
from xqg_ray.serve.client import SearchClient, ServiceError
from xqg_ray.serve.config import Limits, ServeConfig
from xqg_ray.serve.local import free_port, run_server

pytestmark = pytest.mark.ray

DIM = 16
N_VEC = 203  # 4 contiguous shards of 51/51/51/50
TOKEN = "s3cret-test-token"
SMALL = {"shard_num_cpus": 0.05, "router_num_cpus": 0.05, "encoder_num_cpus": 0.1}


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as the kernel lists them) with a socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                address, port_hex = fields[1].split(":")
                if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                    found.add(address)
    return found


@pytest.fixture(scope="module")
def vec_data():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((N_VEC, DIM)).astype(np.float32)
    ids = rng.permutation(100_000)[:N_VEC].astype(np.int64)
    return vectors, ids


@pytest.fixture(scope="module")
def multi_data():
    """40 passages with 1..5 near-duplicate entries each, so top entries crowd into few."""
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 6, size=40)
    centres = rng.standard_normal((40, DIM)).astype(np.float32)
    vectors = np.repeat(centres, counts, axis=0)
    vectors += 0.05 * rng.standard_normal(vectors.shape).astype(np.float32)
    passage_of_entry = np.repeat(np.arange(40, dtype=np.int64) + 1000, counts)
    entry_ids = np.arange(len(vectors), dtype=np.int64)
    return vectors, entry_ids, passage_of_entry


@pytest.fixture(scope="module")
def xquad_run(tmp_path_factory, tiny_models, shared_data):
    """A run root: corpus/passages (XQuAD en) and index/<encoder>/dense, built with tiny BERT."""
    root = str(tmp_path_factory.mktemp("xquad-run"))
    corpus = load_corpus(
        DatasetConfig(name="xquad", data_dir=str(shared_data / "xquad"), languages=["en", "de"])
    )
    passages = corpus.passages.filter(pc.equal(corpus.passages["lang"], "en"))
    storage.write_table(f"{root}/corpus/passages", passages)
    encoder_cfg = EncoderConfig(backend="hf", model=tiny_models["bert"], device="cpu")
    encoder = load_encoder(encoder_cfg)
    texts = [
        f"{t} {x}"
        for t, x in zip(passages["title"].to_pylist(), passages["text"].to_pylist(), strict=True)
    ]
    vectors = encoder.encode_passages(texts)
    build_shards(
        vectors,
        np.arange(len(vectors), dtype=np.int64),
        f"{root}/index/{encoder_cfg.name}/dense",
        pids=passages["pid"].to_pylist(),
        meta={"strategy": "dense", "encoder": encoder_cfg.model_dump()},
    )
    queries = corpus.queries.filter(pc.equal(corpus.queries["lang"], "de"))
    return {
        "root": root,
        "encoder": encoder,
        "vectors": vectors,
        "pids": passages["pid"].to_pylist(),
        "texts": dict(zip(passages["pid"].to_pylist(), passages["text"].to_pylist(), strict=True)),
        "queries": queries["text"].to_pylist()[:6],
    }


@pytest.fixture(scope="module")
def service(tmp_path_factory, vec_data, multi_data, xquad_run, local_ray):
    """The three applications on one Serve HTTP proxy bound to loopback."""
    base = tmp_path_factory.mktemp("indexes")
    vectors, ids = vec_data
    build_shards(vectors, ids, str(base / "vec"), IndexSpec(shards=4), pids=[f"v{i}" for i in ids])
    m_vectors, m_ids, m_passages = multi_data
    build_shards(
        m_vectors, m_ids, str(base / "multi"), IndexSpec(shards=2), entry_to_passage=m_passages
    )
    token_file = base / "token"
    token_file.write_text(TOKEN + "\n")

    port = free_port()
    vec_cfg = ServeConfig(
        index=str(base / "vec"),
        port=port,
        route_prefix="/vec",
        app_name="vec",
        auth_token_file=str(token_file),
        shard_timeout_s=3.0,
        shard_retries=1,
        limits=Limits(max_k=250, max_queries=4, max_query_chars=50, max_body_bytes=16_384),
        shards_per_replica=1,
        **SMALL,
    )
    xquad_cfg = ServeConfig(index=xquad_run["root"], limits=Limits(max_query_chars=200), **SMALL)
    multi_cfg = ServeConfig(
        index=str(base / "multi"), replicas_per_shard=2, shards_per_replica=2, **SMALL
    )
    started = time.perf_counter()
    vec_url = run_server(vec_cfg, blocking=False)  # starts Serve's HTTP proxy on 127.0.0.1:port
    serve.run_many(
        [
            serve.RunTarget(build_app(xquad_cfg), name="xquad", route_prefix="/xquad"),
            serve.RunTarget(build_app(multi_cfg), name="multi", route_prefix="/multi"),
        ]
    )
    print(f"three applications deployed in {time.perf_counter() - started:.1f} s")
    base_url = f"http://127.0.0.1:{port}"
    yield {
        "port": port,
        "vec": SearchClient(vec_url, token=TOKEN),
        "vec_url": vec_url,
        "vec_index": str(base / "vec"),
        "xquad": SearchClient(base_url + "/xquad"),
        "xquad_url": base_url + "/xquad",
        "multi": SearchClient(base_url + "/multi"),
    }
    serve.shutdown()


def result_ids(answer: dict) -> list[list[int]]:
    return [[hit["id"] for hit in row] for row in answer["results"]]


def result_scores(answer: dict) -> list[list[float]]:
    return [[hit["score"] for hit in row] for row in answer["results"]]


def flat_search(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int):
    """One exact IndexFlatIP over every vector: ids and scores, missing results dropped."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    scores, positions = index.search(queries, k)
    keep = positions >= 0
    return (
        [ids[row[mask]].tolist() for row, mask in zip(positions, keep, strict=True)],
        [row[mask].tolist() for row, mask in zip(scores, keep, strict=True)],
    )


def assert_scores_consistent(answer, vectors, queries, k):
    """Robust to ties: scores equal the exact top-k, and each id really has its score."""
    _, expected_scores = flat_search(vectors, np.arange(len(vectors)), queries, k)
    for row, (hits, expected) in enumerate(zip(answer["results"], expected_scores, strict=True)):
        np.testing.assert_allclose([h["score"] for h in hits], expected, rtol=1e-4, atol=1e-5)
        true = [float(vectors[h["id"]] @ queries[row]) for h in hits]
        np.testing.assert_allclose([h["score"] for h in hits], true, rtol=1e-4, atol=1e-5)


# ---- exactness ------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 10, 51, 52, 203, 250])
def test_vector_search_equals_one_exact_index(service, vec_data, k):
    """k=52 exceeds every shard, k=250 exceeds the index (the last shard holds 50)."""
    vectors, ids = vec_data
    queries = np.random.default_rng(k).standard_normal((4, DIM)).astype(np.float32)
    answer = service["vec"].search_vectors(queries, k=k)
    expected_ids, expected_scores = flat_search(vectors, ids, queries, k)
    assert answer["partial"] is False and answer["missing_shards"] == []
    assert result_ids(answer) == expected_ids
    for got, expected in zip(result_scores(answer), expected_scores, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert answer["results"][0][0]["pid"] == f"v{expected_ids[0][0]}"


def test_text_search_on_xquad_equals_offline_search(service, xquad_run):
    queries = xquad_run["queries"]
    answer = service["xquad"].search(queries, k=10, include_text=True)
    local = xquad_run["encoder"].encode_queries(queries)
    assert answer["partial"] is False
    assert_scores_consistent(answer, xquad_run["vectors"], local, 10)
    for row in answer["results"]:
        for hit in row:
            assert hit["pid"] == xquad_run["pids"][hit["id"]]
            assert hit["text"] == xquad_run["texts"][hit["pid"]]


def test_one_shard_vector_search_on_xquad(service, xquad_run):
    queries = xquad_run["vectors"][[3, 17, 101]]  # passage vectors as queries
    answer = service["xquad"].search_vectors(queries, k=5)
    assert_scores_consistent(answer, xquad_run["vectors"], queries, 5)


@pytest.mark.parametrize("k", [1, 4, 15, 40, 45])
def test_multivector_returns_each_passage_once_by_its_best_entry(service, multi_data, k):
    vectors, _, passage_of_entry = multi_data
    queries = np.random.default_rng(100 + k).standard_normal((3, DIM)).astype(np.float32)
    answer = service["multi"].search_vectors(queries, k=k)
    all_scores = queries @ vectors.T
    for row, hits in enumerate(answer["results"]):
        best: dict[int, float] = {}
        for column, passage in enumerate(passage_of_entry.tolist()):
            best[passage] = max(best.get(passage, -np.inf), float(all_scores[row, column]))
        ranked = sorted(best.items(), key=lambda item: -item[1])[:k]
        assert [h["id"] for h in hits] == [p for p, _ in ranked]  # k=45 > 40 passages: 40
        np.testing.assert_allclose([h["score"] for h in hits], [s for _, s in ranked], rtol=1e-5)


# ---- bad requests ---------------------------------------------------------------------------


def post(url: str, body=None, raw: str | None = None, token: str | None = TOKEN, **headers):
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if raw is not None:
        headers.setdefault("Content-Type", "application/json")
        return requests.post(url, data=raw, headers=headers, timeout=30)
    return requests.post(url, json=body, headers=headers, timeout=30)


def good_vectors(n: int = 1) -> list[list[float]]:
    return np.ones((n, DIM)).tolist()


@pytest.mark.parametrize(
    ("body", "raw", "status", "message"),
    [
        ({"vectors": good_vectors(), "k": 0}, None, 422, "greater than or equal to 1"),
        ({"vectors": good_vectors(), "k": 251}, None, 422, "k must be at most 250"),
        ({"vectors": good_vectors(), "k": "many"}, None, 422, "valid integer"),
        ({"vectors": [], "k": 3}, None, 422, "at least 1 item"),
        (
            {"vectors": good_vectors(5), "k": 3},
            None,
            422,
            "5 queries in one request; the limit is 4",
        ),
        ({"vectors": [[1.0] * 3], "k": 3}, None, 422, "dimension 16; got lengths [3]"),
        ({"vectors": [[1.0] * 16, [1.0] * 15], "k": 3}, None, 422, "got lengths [15, 16]"),
        (None, '{"vectors": [[NaN' + ", 1.0" * 15 + ']], "k": 3}', 422, "NaN or infinity"),
        ({"vectors": good_vectors(), "k": 3, "limit": 2}, None, 422, "Extra inputs"),
        (
            {"vectors": good_vectors(), "include_text": True},
            None,
            400,
            "include_text needs the corpus",
        ),
        (None, '{"vectors": [[1.0, 2.0', 422, "JSON decode error"),
        (None, "[" + "1.0," * 5000 + "1.0]", 413, "request body larger than 16384 bytes"),
    ],
)
def test_bad_vector_requests_get_a_4xx_that_says_why(service, body, raw, status, message):
    response = post(service["vec_url"] + "/search_vectors", body, raw)
    assert response.status_code == status
    assert message in response.text
    assert response.headers["content-type"] == "application/json"  # the documented error body


@pytest.mark.parametrize(
    ("queries", "message"),
    [
        ([], "at least 1 item"),
        (["   "], "queries[0] is empty"),
        (["fine", "x" * 201], "queries[1] has 201 characters; the limit is 200"),
        (["q"] * 65, "65 queries in one request; the limit is 64"),
        ([3], "valid string"),
    ],
)
def test_bad_text_requests_get_a_422(service, queries, message):
    response = post(service["xquad_url"] + "/search", {"queries": queries, "k": 3}, token=None)
    assert response.status_code == 422
    assert message in response.text


def test_text_search_without_an_encoder_is_a_400(service):
    response = post(service["vec_url"] + "/search", {"queries": ["hello"], "k": 3})
    assert response.status_code == 400
    assert "no query encoder" in response.json()["detail"]


def test_wrong_content_type_and_method_and_route(service):
    url = service["vec_url"]
    as_text = post(url + "/search_vectors", raw=json.dumps({"vectors": good_vectors()}))
    as_plain = post(
        url + "/search_vectors",
        raw=json.dumps({"vectors": good_vectors()}),
        **{"Content-Type": "text/plain"},
    )
    assert as_text.status_code == 200 and as_plain.status_code == 422
    assert requests.get(url + "/search_vectors", timeout=30).status_code == 405
    assert requests.get(url + "/nothing-here", timeout=30).status_code == 404


def test_client_raises_service_error_with_the_message(service):
    with pytest.raises(ServiceError, match="k must be at most 250") as info:
        service["vec"].search_vectors(np.ones((1, DIM)), k=1000)
    assert info.value.status == 422


# ---- exposure -------------------------------------------------------------------------------


def test_service_listens_on_loopback_only(service):
    assert listening_addresses(service["port"]) == {"0100007F"}  # 127.0.0.1, nothing else


def test_bearer_token_guards_everything_but_healthz(service):
    url = service["vec_url"]
    body = {"vectors": good_vectors(), "k": 2}
    assert post(url + "/search_vectors", body, token=None).status_code == 401
    assert post(url + "/search_vectors", body, token="wrong").status_code == 401
    assert requests.get(url + "/stats", timeout=30).status_code == 401
    assert requests.get(url + "/openapi.json", timeout=30).status_code == 404
    assert post(url + "/search_vectors", body).status_code == 200
    health = requests.get(url + "/healthz", timeout=30)
    assert health.status_code == 200 and health.json() == {
        "status": "ok",
        "shards": 4,
        "encoder": False,
    }
    assert TOKEN not in json.dumps(service["vec"].stats())


def test_openapi_schema_describes_the_api(service):
    schema = requests.get(service["xquad_url"] + "/openapi.json", timeout=30).json()
    assert {"/search", "/search_vectors", "/healthz", "/stats"} <= set(schema["paths"])
    assert "SearchRequest" in schema["components"]["schemas"]


# ---- stats and health -----------------------------------------------------------------------


def test_stats_report_index_requests_and_latency(service, vec_data):
    client = service["vec"]
    client.search_vectors(np.ones((1, DIM)), k=3)
    post(service["vec_url"] + "/search_vectors", {"vectors": [[1.0]], "k": 3})
    stats = client.stats()
    assert stats["manifest"]["dimension"] == DIM
    assert [s["count"] for s in stats["shards"]] == [51, 51, 51, 50]
    assert stats["requests"]["/search_vectors"]["200"] >= 1
    assert stats["requests"]["/search_vectors"]["422"] >= 1
    latency = stats["latency_ms"]["/search_vectors"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]


def test_every_deployment_is_healthy(service):
    for app in ("vec", "xquad", "multi"):
        status = serve.status().applications[app]
        assert status.status == "RUNNING"
        assert {d.status for d in status.deployments.values()} == {"HEALTHY"}
    assert set(serve.status().applications["xquad"].deployments) == {"router"}
    assert set(serve.status().applications["multi"].deployments) == {
        "router",
        "shards-00000-00001",
    }  # the CPU encoder runs inside the router; a small index too, unless told otherwise


def test_latency_bench_loop_measures_the_service(service, xquad_run):
    queries = xquad_run["vectors"][:12]
    url = service["xquad_url"] + "/search_vectors"
    stats, failures = asyncio.run(http_load(url, queries, k=5, concurrency=4, max_duration_s=60))
    assert failures == 0
    assert stats["requests"] == 12
    assert 0 < stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"]
    assert stats["qps"] > 0


# ---- failures -------------------------------------------------------------------------------


def replica_actors(app: str, deployment: str) -> list[str]:
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(prefix)
    )


def test_killed_replica_is_replaced_by_its_twin(service, multi_data):
    vectors, _, passage_of_entry = multi_data
    names = replica_actors("multi", "shards-00000-00001")
    assert len(names) == 2
    queries = np.random.default_rng(7).standard_normal((2, DIM)).astype(np.float32)
    before = service["multi"].search_vectors(queries, k=5)
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    outcomes = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and outcomes.count("complete") < 3:
        try:
            answer = service["multi"].search_vectors(queries, k=5)
        except ServiceError as exc:  # the group's only twin is down too: a 503, never silent
            assert exc.status == 503 and "[0, 1]" in str(exc)
            outcomes.append("503")
            continue
        if answer["partial"]:
            assert answer["missing_shards"] == [0, 1]
            outcomes.append("partial")
        else:
            assert answer == before  # complete answers are the exact ones
            outcomes.append("complete")
    print("answers after the kill:", outcomes)
    # the twin answers: complete, exact answers while the killed replica is still gone
    assert outcomes.count("complete") == 3, outcomes


def test_killed_only_replica_is_flagged_never_silent(service, vec_data):
    """Shard 1's only replica dies while its file is away, so Serve cannot restore it: every
    answer in that gap is partial (naming shard 1) or a 503, never silently short. Once the file
    is back, Serve restores the shard and answers are complete and exact again."""
    vectors, ids = vec_data
    queries = np.random.default_rng(8).standard_normal((2, DIM)).astype(np.float32)
    others = np.r_[0:51, 102:203]  # rows of shards 0, 2 and 3 (contiguous split)
    full = flat_search(vectors, ids, queries, 20)[0]
    without_1 = flat_search(vectors[others], ids[others], queries, 20)[0]

    def outcome() -> str:
        response = post(
            service["vec_url"] + "/search_vectors", {"vectors": queries.tolist(), "k": 20}
        )
        assert response.status_code in (200, 503)
        answer = response.json()
        if response.status_code == 503:
            assert answer["missing_shards"] == [1]
            return "503"
        if answer["partial"]:
            assert answer["missing_shards"] == [1]
            assert result_ids(answer) == without_1
            return "partial"
        assert result_ids(answer) == full
        return "complete"

    shard_file = Path(service["vec_index"]) / "shard-00001.faiss"
    away = shard_file.with_name("shard-00001.faiss.away")
    (name,) = replica_actors("vec", "shard-00001")
    shard_file.rename(away)  # a replacement replica cannot load the shard until it is back
    try:
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        gap: list[str] = []
        deadline = time.monotonic() + 60
        while len(gap) - gap.count("complete") < 3:
            assert time.monotonic() < deadline, gap
            gap.append(outcome())  # a request may still reach the dying replica first
    finally:
        away.rename(shard_file)
    first_flagged = next(i for i, kind in enumerate(gap) if kind != "complete")
    assert "complete" not in gap[first_flagged:], gap  # the gap stays open while the file is away
    after: list[str] = []
    deadline = time.monotonic() + 120
    while after[-2:] != ["complete", "complete"]:
        assert time.monotonic() < deadline, after
        after.append(outcome())
    print("answers in the gap:", gap, "after the file came back:", after)
    flagged = gap.count("partial") + after.count("partial")
    assert service["vec"].stats()["partial_answers"] >= flagged
