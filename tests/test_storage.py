"""Storage: atomic parts, manifests and resume, on local disk and on a real S3 server."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from xqg_ray import storage
from xqg_ray.errors import InputError, StorageError


def _table(start: int, n: int) -> pa.Table:
    return pa.table({"id": list(range(start, start + n)), "text": [f"t{i}" for i in range(n)]})


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "run")
    return request.getfixturevalue("s3_bucket") + "/run"


def test_write_and_read_table_round_trip(root):
    table = _table(0, 25)
    manifest = storage.write_table(storage.join(root, "t"), table, rows_per_part=10)
    assert manifest["complete"] and manifest["rows"] == 25
    assert sorted(manifest["parts"]) == ["00000", "00001", "00002"]
    assert storage.read_table(storage.join(root, "t")).equals(table)


def test_parts_resume_and_finalize_refuses_gaps(root):
    target = storage.PartitionedTable(storage.join(root, "parts"))
    target.write_part("00000", _table(0, 3))
    target.write_part("00002", _table(6, 3))
    assert target.committed_parts() == ["00000", "00002"]
    assert not target.is_complete()
    with pytest.raises(StorageError, match="planned parts are missing"):
        target.finalize(expected=["00000", "00001", "00002"])
    assert not target.is_complete()
    target.write_part("00001", _table(3, 3))
    manifest = target.finalize(meta={"stage": "x"}, expected=["00000", "00001", "00002"])
    assert manifest["meta"] == {"stage": "x"}
    assert target.read().column("id").to_pylist() == list(range(9))


def test_temporary_files_are_ignored_by_readers(tmp_path):
    target = storage.PartitionedTable(str(tmp_path / "t"))
    target.write_part("00000", _table(0, 2))
    # a writer that died mid-part leaves only a temporary name behind
    (tmp_path / "t" / ".tmp-deadbeef-part-00001.parquet").write_bytes(b"half a file")
    assert target.committed_parts() == ["00000"]
    assert target.read().num_rows == 2


def test_corrupt_part_names_the_file(tmp_path):
    target = storage.PartitionedTable(str(tmp_path / "t"))
    target.write_part("00000", _table(0, 2))
    (tmp_path / "t" / "part-00001.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match=r"part-00001\.parquet.*corrupt"):
        target.read()


def test_json_atomic_and_errors(root, tmp_path):
    url = storage.join(root, "a", "b.json")
    storage.write_json_atomic(url, {"x": 1})
    assert storage.read_json(url) == {"x": 1}
    bad = tmp_path / "bad.json"
    bad.write_text('{"x": 1,,}')
    with pytest.raises(InputError, match=r"bad\.json: malformed JSON at line 1"):
        storage.read_json(str(bad))
    utf = tmp_path / "bad.txt"
    utf.write_bytes(b"ok\n\xff\xfe")
    with pytest.raises(InputError, match=r"invalid UTF-8 at byte 3 \(line 2\)"):
        storage.read_text(str(utf))
    with pytest.raises(StorageError, match="no such file"):
        storage.read_bytes(str(tmp_path / "missing.json"))


def test_missing_bucket_is_named(s3_server):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-xyz' does not exist"):
        storage.write_json_atomic("s3://no-such-bucket-xyz/run/x.json", {})


def test_local_copy_of_s3_directory(s3_bucket, tmp_path):
    storage.write_json_atomic(f"{s3_bucket}/model/config.json", {"a": 1})
    storage.write_bytes_atomic(f"{s3_bucket}/model/weights.bin", b"\x00\x01")
    local = storage.local_copy(f"{s3_bucket}/model", str(tmp_path / "cache"))
    assert json.loads((tmp_path / "cache" / "model" / "config.json").read_text()) == {"a": 1}
    assert (tmp_path / "cache" / "model" / "weights.bin").read_bytes() == b"\x00\x01"
    assert local.endswith("model")


def test_s3_objects_have_no_leftover_temporaries(s3_bucket):
    storage.write_table(f"{s3_bucket}/t", _table(0, 5), rows_per_part=2)
    fs, path = storage.url_to_fs(f"{s3_bucket}/t")
    names = sorted(n.rsplit("/", 1)[-1] for n in fs.ls(path, detail=False))
    parts = [f"part-0000{i}.parquet" for i in range(3)]
    records = [f"_part-0000{i}.json" for i in range(3)]
    assert names == ["_manifest.json", *records, *parts]


def test_writers_checksum_what_they_write_and_finalize_reads_no_part(root):
    """The manifest comes from the writers' records: the sha256 of the bytes they stored."""
    target = storage.PartitionedTable(storage.join(root, "t"))
    records = {name: target.write_part(name, _table(i * 3, 3)) for i, name in enumerate("ab")}
    for name, record in records.items():
        assert record["rows"] == 3
        assert record["sha256"] == storage.sha256_of(target.part_url(name))
        assert record["bytes"] == len(storage.read_bytes(target.part_url(name)))
    # replace part b behind the writer's back: finalising from records never notices, because
    # it never reads a part (a reader verifying checksums would)
    storage.write_bytes_atomic(target.part_url("b"), b"not what the writer wrote")
    manifest = target.finalize(expected=["a", "b"], records=records)
    assert manifest["parts"]["b"]["sha256"] == records["b"]["sha256"]
    assert manifest["rows"] == 6 and manifest["bytes"] == sum(r["bytes"] for r in records.values())


def test_resume_finalizes_from_the_records_committed_beside_the_parts(root):
    """Parts a killed run committed carry their writer's record; a part without one (the writer
    died between part and record) is not counted as finished."""
    target = storage.PartitionedTable(storage.join(root, "t"))
    first = target.write_part("00000", _table(0, 3))
    storage.write_bytes_atomic(
        target.part_url("00001"), storage.table_to_parquet_bytes(_table(3, 3))
    )
    assert target.committed_parts() == ["00000", "00001"]
    assert target.recorded_parts() == ["00000"]
    second = target.write_part("00001", _table(3, 3))
    manifest = target.finalize(expected=["00000", "00001"], records={"00001": second})
    assert manifest["parts"]["00000"]["sha256"] == first["sha256"]
    assert manifest["parts"]["00001"]["sha256"] == second["sha256"]
    assert target.read()["id"].to_pylist() == list(range(6))
