"""Shared fixtures: the shipped data folder, a real S3 protocol server (moto) on loopback, and
one local Ray shared by the modules that need no cluster of their own."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models run faster on one thread; several threads thrash on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shipped data not found at {SHARED_DATA}: clone the project beside shared/")
    return SHARED_DATA


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1, reached by s3fs/boto through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket; returns its s3:// URL."""
    import boto3

    name = f"xqg-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{name}"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, shared_data) -> dict[str, str]:
    """Tiny mT5 and BERT checkpoints built offline, loaded through the real from_pretrained path."""
    from xqg_ray.testing.tiny import ensure_tiny_models

    return ensure_tiny_models(
        tmp_path_factory.mktemp("tiny-models"), text_dir=str(shared_data / "xquad")
    )


SHARED_RAY_MODULES: set[str] = set()


def pytest_collection_modifyitems(session, config, items):
    """The modules that use `local_ray` run one after another, so Ray starts once for all of
    them; the order of modules within each group, and of tests within a module, is kept."""
    shared = {_module(item) for item in items if "local_ray" in getattr(item, "fixturenames", ())}
    SHARED_RAY_MODULES.update(shared)
    items.sort(key=lambda item: _module(item) not in shared)


def _module(item) -> str | None:
    module = getattr(item, "module", None)
    return module.__name__ if module is not None else None


@pytest.fixture(scope="module")
def local_ray(s3_server):
    """A local 2-CPU Ray, started after the S3 server (its workers inherit the endpoint and test
    credentials) and kept for the next module that uses it. Modules that change what Ray's
    processes inherit (environment variables) or need a cluster of their own start their own."""
    from xqg_ray.ray_start import start_ray

    start_ray(num_cpus=2)
    yield


@pytest.fixture(autouse=True, scope="module")
def no_foreign_ray(request):
    """A module that does not use `local_ray` starts with no Ray running in this process, as if
    it ran alone; the shared one is stopped at the end of the session."""
    import ray

    if request.module.__name__ not in SHARED_RAY_MODULES and ray.is_initialized():
        ray.shutdown()
    yield


@pytest.fixture(autouse=True, scope="session")
def stop_ray_at_the_end():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()
