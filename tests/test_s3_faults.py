"""S3 faults: each fault mode of the proxy against the real (moto) server, at a small size.

The storage layer must retry a 500, a 503, a reset, a lost answer and a delay; an upload cut
halfway must never be recorded as complete with other bytes than its checksum says; and when
retries run out the error names the object and the setting to change (AWS_MAX_ATTEMPTS).
"""

from __future__ import annotations

import hashlib
import os
import uuid

import boto3
import pyarrow as pa
import pytest
import s3fs

from xqg_ray import storage
from xqg_ray.errors import ConfigError, StorageError
from xqg_ray.storage import PartitionedTable
from xqg_ray.testing.s3_fault_proxy import FaultPlan, S3FaultProxy


@pytest.fixture
def proxy(s3_server, monkeypatch):
    """The fault proxy in front of the session's moto server; clients go through it."""
    with S3FaultProxy(s3_server, FaultPlan(delay_s=0.3)) as running:
        monkeypatch.setenv("AWS_ENDPOINT_URL", running.endpoint)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "5")
        monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
        s3fs.S3FileSystem.clear_instance_cache()
        yield running
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh bucket, created on the server directly (not through the proxy)."""
    name = f"xqg-faults-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


def stored(s3_server: str, bucket: str, key: str) -> bytes:
    """An object's bytes as the server holds them, read without the proxy."""
    client = boto3.client("s3", endpoint_url=s3_server)
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


@pytest.mark.parametrize("kind", ["error_500", "error_503", "reset", "drop_response", "delay"])
def test_each_fault_on_a_write_and_a_read_is_retried(kind, proxy, bucket, s3_server):
    data = os.urandom(200_000)
    url = f"s3://{bucket}/obj-{kind}.bin"
    storage.exists(f"s3://{bucket}/warm-up")  # the bucket check happens before the faults
    proxy.clear()
    count = 1 if kind == "delay" else 2  # a delayed request is answered: there is no repeat
    proxy.force(kind, count=count, match="PUT")
    storage.write_bytes_atomic(url, data)
    assert stored(s3_server, bucket, f"obj-{kind}.bin") == data
    proxy.force(kind, count=count, match="GET")
    assert storage.read_bytes(url) == data
    stats = proxy.stats()
    assert stats["faults"][kind] == 2 * count
    assert stats["failed"] == 0, stats["failed_requests"]
    if kind != "delay":
        assert stats["retried"] >= 4 and stats["recovered"] == 2


def test_cut_upload_is_sent_again_and_the_record_matches_the_stored_bytes(proxy, bucket, s3_server):
    table = PartitionedTable(f"s3://{bucket}/table")
    rows = pa.table({"pid": list(range(5000)), "text": [f"passage {i}" * 20 for i in range(5000)]})
    storage.exists(table.url)
    proxy.clear()
    proxy.force("cut_upload", count=1, match="/part-")
    table.write_part("00000", rows)
    assert proxy.stats()["faults"]["cut_upload"] == 1
    body = stored(s3_server, bucket, "table/part-00000.parquet")
    assert hashlib.sha256(body).hexdigest() == table.read_record("00000")["sha256"]
    assert table.read_part("00000").equals(rows)


def test_exhausted_retries_name_the_object_and_the_setting(proxy, bucket, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    s3fs.S3FileSystem.clear_instance_cache()
    url = f"s3://{bucket}/never.bin"
    storage.exists(f"s3://{bucket}/warm-up")
    proxy.clear()
    proxy.force("error_503", count=1000, match="never.bin")
    with pytest.raises(StorageError) as caught:
        storage.write_bytes_atomic(url, b"x" * 1000)
    message = str(caught.value)
    assert url in message and "AWS_MAX_ATTEMPTS" in message and "rerun" in message
    stats = proxy.stats()
    assert stats["failed"] == 1 and stats["retried"] >= 1
    # the rerun, once S3 answers again, finishes
    proxy.clear()
    storage.write_bytes_atomic(url, b"x" * 1000)
    assert storage.read_bytes(url) == b"x" * 1000


def test_a_bad_retry_setting_is_named(monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "zero")
    with pytest.raises(ConfigError, match="AWS_MAX_ATTEMPTS='zero'"):
        storage.s3_settings()
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("AWS_RETRY_MODE", "eager")
    with pytest.raises(ConfigError, match="AWS_RETRY_MODE='eager'"):
        storage.s3_settings()


def test_random_faults_at_ten_percent_leave_every_part_whole(proxy, bucket, s3_server):
    """A seeded 10% plan over a table's writes, listing and reads: every part reads back as
    written, and every record's sha256 is the stored object's."""
    proxy.set_plan(FaultPlan(rate=0.1, delay_s=0.05, seed=3, cut_uploads=1, cut_match="/part-"))
    proxy.clear()
    table = PartitionedTable(f"s3://{bucket}/random")
    parts = {f"{i:05d}": pa.table({"pid": [i] * 300, "x": list(range(300))}) for i in range(12)}
    for name, rows in parts.items():
        table.write_part(name, rows)
    assert table.recorded_parts() == sorted(parts)
    records = {name: table.read_record(name) for name in parts}
    for name, rows in parts.items():
        body = stored(s3_server, bucket, f"random/part-{name}.parquet")
        assert hashlib.sha256(body).hexdigest() == records[name]["sha256"]
        assert table.read_part(name).equals(rows)
    stats = proxy.stats()
    assert stats["faults_total"] >= 3 and stats["faults"]["cut_upload"] == 1
    assert stats["failed"] == 0
