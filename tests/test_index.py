"""FAISS shards: round trips against one exact index, checksums, mmap, multivector collapse."""

from __future__ import annotations

import json
import os

import faiss
import numpy as np
import pytest

from xqg_ray.errors import InputError, StorageError
from xqg_ray.index import (
    IndexSpec,
    InProcessIndex,
    build_shards,
    find_index,
    load_manifest,
    load_shard,
    merge_topk,
    search_index,
)

DIM = 16


def random_vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip"):
    """The reference: one exact FAISS index over every vector, positions as ids."""
    index = faiss.IndexFlatIP(DIM) if metric == "ip" else faiss.IndexFlatL2(DIM)
    index.add(vectors)
    return index.search(queries, k)


def assert_same_answer(got, expected_scores, expected_positions, ids):
    scores, got_ids = got
    expected_ids = np.where(expected_positions >= 0, ids[expected_positions], -1)
    np.testing.assert_array_equal(got_ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_shards", [1, 4])
@pytest.mark.parametrize("k", [1, 7, 40, 120])
def test_flat_shards_equal_one_exact_index(tmp_path, n_shards, k):
    # 103 vectors in 4 shards of ~26: k=40 exceeds every shard, k=120 exceeds the whole index
    vectors = random_vectors(103)
    ids = np.random.default_rng(1).permutation(10_000)[:103].astype(np.int64)
    build_shards(vectors, ids, str(tmp_path), IndexSpec(shards=n_shards))
    queries = random_vectors(9, seed=2)

    got = InProcessIndex(str(tmp_path)).search(queries, k)

    assert_same_answer(got, *exact_search(vectors, queries, k), ids)
    if k > 103:
        assert (got[1][:, 103:] == -1).all()


def test_l2_metric_merges_smallest_distances(tmp_path):
    vectors, queries = random_vectors(50), random_vectors(4, seed=3)
    ids = np.arange(50, dtype=np.int64) + 1000
    build_shards(vectors, ids, str(tmp_path), IndexSpec(shards=3, metric="l2"))
    got = InProcessIndex(str(tmp_path)).search(queries, 20)
    assert_same_answer(got, *exact_search(vectors, queries, 20, metric="l2"), ids)


def test_manifest_records_layout_and_checksums(tmp_path):
    vectors = random_vectors(10)
    manifest = build_shards(
        vectors, np.arange(10), str(tmp_path), IndexSpec(shards=3), meta={"strategy": "dense"}
    )
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest
    assert (manifest["dimension"], manifest["n_total"], manifest["metric"]) == (DIM, 10, "ip")
    assert [s["count"] for s in manifest["shards"]] == [4, 3, 3]  # contiguous array_split
    assert manifest["meta"] == {"strategy": "dense"}
    for shard in manifest["shards"]:
        path = tmp_path / shard["file"]
        assert path.stat().st_size == shard["bytes"]
    # shard 1 holds rows 4..6 (contiguous): its ids are exactly those
    shard1 = load_shard(str(tmp_path), 1)
    _, found = shard1.search(vectors[4:7], 3)
    assert set(found.reshape(-1)) == {4, 5, 6}


def test_ivf_with_every_list_probed_is_exact(tmp_path):
    vectors, queries = random_vectors(600), random_vectors(5, seed=4)
    ids = np.arange(600, dtype=np.int64) * 3
    manifest = build_shards(
        vectors,
        ids,
        str(tmp_path),
        IndexSpec(shards=2, factory="IVF8,Flat", train_sample=400, search_params="nprobe=8"),
    )
    assert manifest["search_params"] == "nprobe=8"
    searcher = InProcessIndex(str(tmp_path))
    assert all(faiss.extract_index_ivf(shard).nprobe == 8 for shard in searcher.group.indexes)
    assert_same_answer(searcher.search(queries, 10), *exact_search(vectors, queries, 10), ids)


def test_hnsw_round_trip_finds_the_true_neighbours(tmp_path):
    vectors, queries = random_vectors(800), random_vectors(20, seed=5)
    ids = np.arange(800, dtype=np.int64) + 5
    build_shards(
        vectors,
        ids,
        str(tmp_path),
        IndexSpec(shards=2, factory="HNSW16", search_params="efSearch=200"),
    )
    _, got = InProcessIndex(str(tmp_path)).search(queries, 10)
    _, expected = exact_search(vectors, queries, 10)
    recall = np.mean([len(set(g) & set(ids[e])) / 10 for g, e in zip(got, expected, strict=True)])
    assert recall >= 0.95


def test_pq_shards_find_each_query_under_its_global_id(tmp_path):
    vectors = random_vectors(300)
    ids = np.arange(300, dtype=np.int64) + 70_000
    build_shards(vectors, ids, str(tmp_path), IndexSpec(shards=2, factory="PQ4x4"))
    queries = np.arange(0, 300, 6)  # rows held by both shards
    _, got = InProcessIndex(str(tmp_path)).search(vectors[queries], 5)
    # lossy codes may reorder near neighbours, but each row finds itself under its global id
    assert all(ids[row] in found for row, found in zip(queries, got, strict=True))


def test_corrupt_shard_is_rejected_by_checksum(tmp_path):
    build_shards(random_vectors(20), np.arange(20), str(tmp_path), IndexSpec(shards=2))
    shard = tmp_path / "shard-00001.faiss"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    load_shard(str(tmp_path), 0)  # the intact shard still loads
    with pytest.raises(StorageError, match=r"shard-00001\.faiss: checksum mismatch"):
        load_shard(str(tmp_path), 1)
    with pytest.raises(StorageError, match="checksum mismatch"):
        InProcessIndex(str(tmp_path))


def test_mmap_load_reads_the_file_in_place(tmp_path):
    """A memory-mapped shard sees its file's bytes; a normally read one keeps its own copy."""
    vectors = random_vectors(64)
    build_shards(vectors, np.arange(64), str(tmp_path / "a"))
    other = np.ones((64, DIM), dtype=np.float32)
    build_shards(other, np.arange(64), str(tmp_path / "b"))
    path_a = tmp_path / "a" / "shard-00000.faiss"
    bytes_b = (tmp_path / "b" / "shard-00000.faiss").read_bytes()
    assert path_a.stat().st_size == len(bytes_b)

    mapped = load_shard(str(tmp_path / "a"), 0, mmap=True)
    copied = load_shard(str(tmp_path / "a"), 0, mmap=False)
    query = np.ones((1, DIM), dtype=np.float32)
    np.testing.assert_allclose(mapped.search(query, 1)[0], copied.search(query, 1)[0])

    with open(path_a, "r+b") as handle:  # same layout, other vectors: overwrite in place
        handle.write(bytes_b)
    assert mapped.search(query, 1)[0][0, 0] == pytest.approx(float(DIM))
    assert copied.search(query, 1)[0][0, 0] == pytest.approx(float(vectors.sum(axis=1).max()))


def test_merge_ignores_missing_results_whatever_their_score():
    shard_a = (np.array([[0.9, 5.0]], np.float32), np.array([[5, -1]], np.int64))
    shard_b = (np.array([[0.5, 0.4]], np.float32), np.array([[7, 8]], np.int64))
    scores, ids = merge_topk([shard_a, shard_b], 4)
    assert ids.tolist() == [[5, 7, 8, -1]]
    np.testing.assert_allclose(scores[0, :3], [0.9, 0.5, 0.4])


def test_multivector_returns_each_passage_once_with_its_best_entry(tmp_path):
    rng = np.random.default_rng(6)
    n_passages = 40
    entries_per_passage = rng.integers(1, 7, size=n_passages)  # 1..6 entries
    centres = rng.standard_normal((n_passages, DIM)).astype(np.float32)
    passage_of_entry = np.repeat(np.arange(n_passages) * 10 + 3, entries_per_passage)
    # entries of one passage are near-duplicates, so the top entries crowd into few passages
    vectors = np.repeat(centres, entries_per_passage, axis=0)
    vectors += 0.05 * rng.standard_normal(vectors.shape).astype(np.float32)
    entry_ids = rng.permutation(len(vectors)).astype(np.int64) + 500
    manifest = build_shards(
        vectors, entry_ids, str(tmp_path), IndexSpec(shards=3), entry_to_passage=passage_of_entry
    )
    assert manifest["entry_map"]["max_entries_per_passage"] == entries_per_passage.max()
    queries = rng.standard_normal((6, DIM)).astype(np.float32)
    searcher = InProcessIndex(str(tmp_path))

    scores_all = queries @ vectors.T
    for k in (1, 5, 25, 50):  # 50 > 40 passages: padded with -1
        scores, ids = searcher.search(queries, k)
        for row in range(len(queries)):
            best = {}
            for column, passage in enumerate(passage_of_entry):
                best[passage] = max(best.get(passage, -np.inf), scores_all[row, column])
            ranked = sorted(best.items(), key=lambda item: -item[1])[:k]
            expected_ids = [passage for passage, _ in ranked] + [-1] * (k - len(ranked))
            assert ids[row].tolist() == expected_ids
            np.testing.assert_allclose(
                scores[row, : len(ranked)], [s for _, s in ranked], rtol=1e-5, atol=1e-5
            )


def test_a_passages_entries_share_one_shard_whatever_their_row_order(tmp_path):
    import pyarrow.parquet as pq

    rng = np.random.default_rng(8)
    passage_of_entry = rng.permutation(np.repeat(np.arange(30), 4))  # 4 entries each, shuffled
    vectors = random_vectors(len(passage_of_entry), seed=9)
    manifest = build_shards(
        vectors,
        np.arange(120) + 7,
        str(tmp_path),
        IndexSpec(shards=4),
        entry_to_passage=passage_of_entry,
        pids=[f"p{p}" for p in passage_of_entry],
    )
    held = [
        set(pq.read_table(tmp_path / shard["pid_map"]["file"])["id"].to_pylist())
        for shard in manifest["shards"]
    ]
    assert sum(len(passages) for passages in held) == 30  # disjoint ...
    assert set().union(*held) == set(range(30))  # ... and complete
    assert [shard["count"] for shard in manifest["shards"]] == [4 * len(p) for p in held]
    assert manifest["max_entries_per_passage"] == 4
    with pytest.raises(InputError, match="number of passages \\(30\\), got 31"):
        build_shards(
            vectors,
            np.arange(120),
            str(tmp_path / "x"),
            IndexSpec(shards=31),
            entry_to_passage=passage_of_entry,
        )


def test_no_shard_is_empty_when_passages_are_uneven(tmp_path):
    # five entries of three passages (one with three entries) into three shards: one each
    passage_of_entry = np.array([0, 1, 1, 1, 2])
    manifest = build_shards(
        random_vectors(5),
        np.arange(5),
        str(tmp_path),
        IndexSpec(shards=3),
        entry_to_passage=passage_of_entry,
    )
    assert [shard["count"] for shard in manifest["shards"]] == [1, 3, 1]


def test_bad_search_params_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(InputError, match="search_params"):
        build_shards(
            random_vectors(400),
            np.arange(400),
            str(tmp_path / "ivf"),
            IndexSpec(factory="IVF4,Flat", search_params="bogus=3"),
        )
    assert not (tmp_path / "ivf").exists() or not any((tmp_path / "ivf").iterdir())


def test_pid_map_names_passages(tmp_path):
    vectors = random_vectors(6)
    passage_of_entry = np.array([0, 0, 1, 1, 2, 2])
    pids = ["en-a", "en-a", "en-b", "en-b", "en-c", "en-c"]
    build_shards(
        vectors,
        np.arange(6),
        str(tmp_path),
        IndexSpec(shards=2),
        entry_to_passage=passage_of_entry,
        pids=pids,
    )
    searcher = InProcessIndex(str(tmp_path))
    _, ids = searcher.search(vectors[[4]], 3)
    assert ids[0, 0] == 2
    assert searcher.pids(ids)[0][0] == "en-c"
    assert searcher.pids(np.array([[-1, 1]])) == [[None, "en-b"]]
    with pytest.raises(InputError, match="passage id 0 has several pids"):
        build_shards(
            vectors,
            np.arange(6),
            str(tmp_path / "bad"),
            entry_to_passage=passage_of_entry,
            pids=["x", "y", "b", "b", "c", "c"],
        )


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(StorageError, match="no index manifest"):
        load_manifest(str(tmp_path / "nothing"))
    vectors = random_vectors(10)
    build_shards(vectors, np.arange(10), str(tmp_path))
    searcher = InProcessIndex(str(tmp_path))
    with pytest.raises(InputError, match="dimension 8, the index has 16"):
        searcher.search(np.zeros((2, 8), np.float32), 3)
    with pytest.raises(InputError, match="k must be an integer >= 1"):
        searcher.search(vectors[:1], 0)
    with pytest.raises(InputError, match="NaN"):
        search_index(searcher.group.indexes[0], np.full((1, DIM), np.nan, np.float32), 1)
    with pytest.raises(InputError, match=r"index shards must be between 1 and .* \(10\), got 11"):
        build_shards(vectors, np.arange(10), str(tmp_path / "x"), IndexSpec(shards=11))
    with pytest.raises(InputError, match="ids must be unique"):
        build_shards(vectors, np.zeros(10, np.int64), str(tmp_path / "x"))
    with pytest.raises(InputError, match="factory"):
        build_shards(vectors, np.arange(10), str(tmp_path / "x"), IndexSpec(factory="NotAnIndex"))
    assert not os.path.exists(tmp_path / "x" / "manifest.json")


def test_find_index_accepts_a_run_root_with_one_index(tmp_path):
    index_url = str(tmp_path / "index" / "enc" / "dense")
    build_shards(random_vectors(5), np.arange(5), index_url)
    assert find_index(str(tmp_path)) == index_url
    assert find_index(index_url) == index_url
    build_shards(random_vectors(5), np.arange(5), str(tmp_path / "index" / "enc" / "xqg"))
    with pytest.raises(InputError, match="several indexes"):
        find_index(str(tmp_path))
