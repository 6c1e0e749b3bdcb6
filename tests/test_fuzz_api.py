"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis) on loopback, and credentials
(bearer token, AWS secret key) kept out of /stats, the service's logs and results files."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import ray
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from ray import serve
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

import xqg_ray
from xqg_ray.bench.harness import machine_info, write_results
from xqg_ray.index import IndexSpec, build_shards
from xqg_ray.ray_start import start_ray
from xqg_ray.serve.app import build_app
from xqg_ray.serve.config import Limits, ServeConfig
from xqg_ray.serve.local import free_port, run_server

pytestmark = pytest.mark.ray

DIM = 2  # small, so fuzzed vectors often have the right length and reach the shards
TOKEN = "tok-7f3a9c-never-logged"
AWS_SECRET = "aws-secret-5b21e0-never-logged"
SMALL = {"shard_num_cpus": 0.05, "router_num_cpus": 0.05}


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """`open` (no token, serves its schema) and `locked` (token from an env variable)."""
    base = tmp_path_factory.mktemp("fuzz-api")
    vectors = np.random.default_rng(0).standard_normal((60, DIM)).astype(np.float32)
    build_shards(vectors, np.arange(60), str(base / "index"), IndexSpec(shards=2))
    monkey = pytest.MonkeyPatch()
    monkey.setenv("XQG_TEST_TOKEN", TOKEN)  # workers started below inherit both
    monkey.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    port = free_port()
    limits = Limits(max_k=50, max_queries=4, max_query_chars=40, max_body_bytes=8192)
    start_ray(num_cpus=2)
    open_cfg = ServeConfig(
        index=str(base / "index"), port=port, app_name="open", route_prefix="/open", **SMALL
    )
    locked_cfg = ServeConfig(
        index=str(base / "index"),
        port=port,
        auth_token_env="XQG_TEST_TOKEN",
        limits=limits,
        **SMALL,
    )
    run_server(open_cfg.model_copy(update={"limits": limits}), blocking=False)
    serve.run(build_app(locked_cfg), name="locked", route_prefix="/locked")
    session_dir = Path(ray._private.worker.global_worker.node.get_session_dir_path())
    yield {"base": f"http://127.0.0.1:{port}", "session_dir": session_dir, "tmp": base}
    serve.shutdown()
    ray.shutdown()
    monkey.undo()


@pytest.fixture(scope="module")
def api_schema(services):
    return schemathesis.openapi.from_url(services["base"] + "/open/openapi.json")


CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_never_answers_5xx_and_matches_its_schema(api_schema, services, mode):
    """Every operation of the schema, with valid (positive) and invalid (negative) requests."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert labels >= {"POST /search", "POST /search_vectors", "GET /healthz", "GET /stats"}
    for operation in operations:
        if mode == GenerationMode.NEGATIVE and operation.method.upper() == "GET":
            continue  # the GET routes take no input: nothing to make invalid

        @settings(
            max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case):
            case.call_and_validate(base_url=services["base"] + "/open", checks=CHECKS, timeout=30)

        call()


def test_huge_vector_values_get_a_422_that_says_so(services):
    """Finite floats whose inner products overflow float32 must not break the JSON answer."""
    body = {"vectors": [[3e38, 3e38]], "k": 3}
    response = requests.post(services["base"] + "/open/search_vectors", json=body, timeout=30)
    assert response.status_code == 422, response.text
    assert "vector values too large" in response.json()["detail"]


def test_credentials_stay_out_of_stats_logs_and_results(services, tmp_path):
    locked = services["base"] + "/locked"
    good = {"Authorization": f"Bearer {TOKEN}"}
    body = {"vectors": [[1.0, 0.5]], "k": 3}
    assert requests.post(locked + "/search_vectors", json=body, timeout=30).status_code == 401
    bad = {"Authorization": f"Bearer {TOKEN}x"}  # a near miss must not be echoed either
    assert (
        requests.post(locked + "/search_vectors", json=body, headers=bad, timeout=30).status_code
        == 401
    )
    answer = requests.post(locked + "/search_vectors", json=body, headers=good, timeout=30)
    assert answer.status_code == 200
    stats = requests.get(locked + "/stats", headers=good, timeout=30)
    assert stats.status_code == 200 and stats.json()["requests"]["/search_vectors"]["401"] == 2
    results = write_results(
        tmp_path / "results.json",
        {"machine": machine_info(), "stats": stats.json(), "answer": answer.json()},
    )
    texts = {"/stats": stats.text, "answer": answer.text, str(results): results.read_text()}
    logs = [p for p in services["session_dir"].joinpath("logs").rglob("*") if p.is_file()]
    assert any("serve" in str(p) for p in logs), "the service's logs were not found"
    for path in logs:
        texts[str(path)] = path.read_text(errors="replace")
    for secret in (TOKEN, AWS_SECRET):
        leaks = [where for where, text in texts.items() if secret in text]
        assert leaks == [], f"{secret[:8]}... appears in {leaks}"


def unsafe_loads(source: str) -> list[str]:
    """Calls that would unpickle data: pickle/cloudpickle/joblib loads, np.load(allow_pickle=True),
    torch.load without weights_only=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if name.split(".")[0] in ("pickle", "cloudpickle", "joblib", "dill") and "load" in name:
            found.append(name)
        elif name.endswith("load") and keywords.get("allow_pickle") == "True":
            found.append(f"{name}(allow_pickle=True)")
        elif name == "torch.load" and keywords.get("weights_only") != "True":
            found.append("torch.load without weights_only=True")
    return found


def test_unsafe_load_finder_finds_each_kind():
    source = "pickle.loads(b)\nnp.load(p, allow_pickle=True)\ntorch.load(p)\nnp.load(p)\n"
    assert unsafe_loads(source) == [
        "pickle.loads",
        "np.load(allow_pickle=True)",
        "torch.load without weights_only=True",
    ]


def test_nothing_read_from_storage_is_unpickled():
    package = Path(xqg_ray.__file__).parent
    found = {
        str(path.relative_to(package)): calls
        for path in sorted(package.rglob("*.py"))
        if (calls := unsafe_loads(path.read_text(encoding="utf-8")))
    }
    assert found == {}
