"""Service configuration without a running Ray: config files, builder, token, URLs, client."""

from __future__ import annotations

import importlib
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from xqg_ray.config import EncoderConfig
from xqg_ray.errors import ConfigError, StorageError
from xqg_ray.index import IndexSpec, build_shards
from xqg_ray.serve.app import app_builder, encoder_from_manifest, resolve_corpus
from xqg_ray.serve.client import SearchClient, ServiceError
from xqg_ray.serve.config import ServeConfig
from xqg_ray.serve.local import service_url
from xqg_ray.serve.router import resolve_token

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "jobs" / "configs").glob("serve*.yaml"))


def test_defaults_bind_to_loopback_with_limits():
    cfg = ServeConfig(index="runs/demo")
    assert cfg.host == "127.0.0.1"
    assert cfg.limits.max_k >= 100 and cfg.limits.max_body_bytes <= 1 << 20
    assert cfg.auth_token_env == "" and cfg.auth_token_file == ""


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_serve_config_files_are_valid_for_serve_and_for_us(path):
    data = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(data)  # what `serve run` / RayService check
    for application in data["applications"]:
        module, name = application["import_path"].split(":")
        assert getattr(importlib.import_module(module), name) is app_builder
        ServeConfig.model_validate(application["args"])


def test_app_builder_builds_from_args_and_rejects_bad_ones(tmp_path):
    build_shards(
        np.eye(4, dtype=np.float32), np.arange(4), str(tmp_path / "index"), IndexSpec(shards=2)
    )
    assert isinstance(app_builder({"index": str(tmp_path / "index")}), Application)
    with pytest.raises(ConfigError, match="replicas_per_shard"):
        app_builder({"index": str(tmp_path / "index"), "replicas_per_shard": 0})
    with pytest.raises(ConfigError, match="unknown_knob"):
        app_builder({"index": str(tmp_path / "index"), "unknown_knob": 1})
    with pytest.raises(StorageError, match="neither an index"):
        app_builder({"index": str(tmp_path / "nothing")})


def test_encoder_and_corpus_come_from_the_run_root(tmp_path):
    encoder = EncoderConfig(backend="hf", model="/models/bert")
    index_url = str(tmp_path / "index" / encoder.name / "dense")
    manifest = build_shards(
        np.eye(4, dtype=np.float32), np.arange(4), index_url, meta={"encoder": encoder.model_dump()}
    )
    assert encoder_from_manifest(manifest) == encoder
    assert encoder_from_manifest({"meta": {}}) is None
    (tmp_path / "corpus" / "passages").mkdir(parents=True)
    assert resolve_corpus(ServeConfig(index=str(tmp_path)), index_url) == str(
        tmp_path / "corpus" / "passages"
    )
    assert resolve_corpus(ServeConfig(index=index_url), index_url) == ""
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_corpus(ServeConfig(index=index_url, corpus=str(tmp_path / "none")), index_url)


def test_token_comes_from_env_or_file_and_never_from_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XQG_TEST_TOKEN", "abc123")
    cfg = ServeConfig(index="x", auth_token_env="XQG_TEST_TOKEN")
    assert resolve_token(cfg) == "abc123"
    assert "abc123" not in json.dumps(cfg.model_dump())
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert resolve_token(ServeConfig(index="x", auth_token_file=str(token_file))) == "from-file"
    assert resolve_token(ServeConfig(index="x")) is None
    with pytest.raises(ConfigError, match="XQG_MISSING_TOKEN is unset"):
        resolve_token(ServeConfig(index="x", auth_token_env="XQG_MISSING_TOKEN"))
    token_file.write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve_token(ServeConfig(index="x", auth_token_file=str(token_file)))


def test_service_url_reaches_a_wildcard_bind_through_loopback():
    assert service_url(ServeConfig(index="x", port=9000)) == "http://127.0.0.1:9000"
    cfg = ServeConfig(index="x", host="0.0.0.0", port=9000, route_prefix="/search-api/")
    assert service_url(cfg) == "http://127.0.0.1:9000/search-api"


def test_client_reports_an_unreachable_service():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(ServiceError, match="cannot reach the search service") as info:
        SearchClient(f"http://127.0.0.1:{port}", timeout_s=5).health()
    assert info.value.status is None
