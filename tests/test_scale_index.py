"""Index shards built in parallel from parts: exact against one in-memory index, one trained
quantizer shared by every shard, one shard rebuilt alone, multivector by id // stride, language
subsets, Ray tasks and S3. Uses the scale stand-ins (hashing encoder, template generator)."""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np
import pytest
from helpers import tiny_run_config

from xqg_ray.bench.scale_models import scale_config
from xqg_ray.config import StageResources
from xqg_ray.evaluate.offline_search import search_offline
from xqg_ray.index.in_process import InProcessIndex
from xqg_ray.index.shards import IndexSpec, build_shards, load_manifest, load_shard
from xqg_ray.paths import RunPaths
from xqg_ray.schema import arrow_to_vectors
from xqg_ray.stages.index import build_index, entries_url, index_url, shard_record_url
from xqg_ray.stages.pipeline import build
from xqg_ray.storage import PartitionedTable, read_json, url_to_fs

NOT_MODELS = {"bert": "unused", "mt5": "unused"}


def scale_run(root: str, shared_data, **sections):
    base = {
        "dataset": {"languages": ["de", "en"], "max_passages": 24},
        "collection": {"passage_languages": ["de", "en"], "passages_per_part": 6},
        "augment": {"strategies": ["dense", "xqg", "multivector"]},
        "ray": {"enabled": False, "progress_bars": False},
        "index": {"shards": 3},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return scale_config(tiny_run_config(root, NOT_MODELS, shared_data, **base), dim=16)


@pytest.fixture(scope="module")
def built(tmp_path_factory, shared_data):
    cfg = scale_run(str(tmp_path_factory.mktemp("scale-index") / "run"), shared_data)
    build(cfg)
    return cfg


def exact(cfg, strategy: str, queries: np.ndarray, k: int):
    """One exact in-memory index over every entry, the reference."""
    entries = PartitionedTable(entries_url(cfg, strategy)).read()
    vectors = arrow_to_vectors(entries["vector"])
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    scores, rows = index.search(queries, k)
    return scores, entries["id"].to_numpy()[rows]


def queries_for(cfg, n: int = 20) -> np.ndarray:
    vectors = PartitionedTable(RunPaths(cfg.root).embeddings(cfg.encoder.name, "queries")).read()
    return arrow_to_vectors(vectors["vector"])[:n]


def test_shards_follow_parts_and_search_exactly(built):
    cfg = built
    for strategy in ("dense", "xqg"):
        url = index_url(cfg, strategy)
        manifest = load_manifest(url)
        assert len(manifest["shards"]) == 3
        parts = PartitionedTable(RunPaths(cfg.root).collection).committed_parts()
        assert len(parts) == 8  # 24 paragraphs x 2 languages, 6 per part
        assert [s["parts"] for s in manifest["shards"]] == [parts[:3], parts[3:6], parts[6:]]
        assert manifest["n_total"] == 24 * 2  # de and en passages
        queries = queries_for(cfg)
        want_scores, want_ids = exact(cfg, strategy, queries, 10)
        got_scores, got_ids = InProcessIndex(url).search(queries, 10)
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_allclose(got_scores, want_scores, rtol=1e-6)
        # each shard's pid map names exactly its own passages; the merged one names them all
        searcher = InProcessIndex(url)
        assert searcher.pid_map.ids.tolist() == sorted(searcher.pid_map.ids.tolist())
        assert len(searcher.pid_map.ids) == manifest["n_total"]


def test_multivector_maps_entries_by_stride(built):
    cfg = built
    url = index_url(cfg, "multivector")
    manifest = load_manifest(url)
    stride = manifest["entry_stride"]
    assert stride == 10 and manifest["max_entries_per_passage"] == 1 + 2 * 2
    entries = PartitionedTable(entries_url(cfg, "multivector")).read()
    ids = entries["id"].to_numpy()
    reference = build_shards(
        arrow_to_vectors(entries["vector"]),
        ids,
        url + "-reference",
        IndexSpec(shards=1),
        entry_to_passage=ids // stride,
        pids=entries["pid"].to_pylist(),
    )
    assert reference["n_total"] == manifest["n_total"]
    queries = queries_for(cfg)
    got = InProcessIndex(url).search(queries, 5)
    want = InProcessIndex(url + "-reference").search(queries, 5)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)


def test_one_shard_is_rebuilt_alone(built, tmp_path):
    import shutil

    cfg = built.model_copy(update={"root": str(tmp_path / "copy")})
    shutil.copytree(built.root, cfg.root)
    url = index_url(cfg, "dense")
    before = load_manifest(url)
    fs, path = url_to_fs(url)
    os.remove(os.path.join(path, "manifest.json"))
    os.remove(os.path.join(path, "shard-00001.faiss"))
    os.remove(shard_record_url(url, 1))
    untouched = os.stat(os.path.join(path, "shard-00000.faiss")).st_mtime_ns
    after = build_index(cfg, "dense")
    assert os.stat(os.path.join(path, "shard-00000.faiss")).st_mtime_ns == untouched
    assert [s["sha256"] for s in after["shards"]] == [s["sha256"] for s in before["shards"]]
    assert read_json(shard_record_url(url, 1))["count"] == before["shards"][1]["count"]


def test_ivf_pq_trains_one_quantizer_on_a_sample(built, tmp_path):
    import shutil

    cfg = built.model_copy(deep=True, update={"root": str(tmp_path / "ivf")})
    shutil.copytree(built.root, cfg.root)
    cfg.index.factory = "IVF4,PQ4x4"
    cfg.index.train_sample = 40
    cfg.index.shards = 2
    out = build_index(cfg, "xqg")
    assert out["trained"]["sample"] == 40 and out["factory"] == "IVF4,PQ4x4"
    url = index_url(cfg, "xqg")
    centroids = []
    for number in range(2):
        loaded = load_shard(url, number, mmap=False)  # keep it alive: ivf points into it
        shard = faiss.extract_index_ivf(loaded)
        centroids.append(shard.quantizer.reconstruct_n(0, shard.nlist))
        assert loaded.ntotal == out["shards"][number]["count"]
    np.testing.assert_array_equal(centroids[0], centroids[1])
    results = InProcessIndex(url).search(queries_for(cfg), 5)[1]
    assert (results >= 0).any()


def test_language_subset_index_from_parts(built):
    cfg = built
    out = build_index(cfg, "dense", ["de"])
    assert out["n_total"] == 24 and out["meta"]["passage_languages"] == ["de"]
    searcher = InProcessIndex(index_url(cfg, "dense", ["de"]))
    pids = searcher.pids(searcher.search(queries_for(cfg), 24)[1])
    assert all(p.startswith("de-") for row in pids for p in row if p)
    mv = build_index(cfg, "multivector", ["en"])
    searcher = InProcessIndex(index_url(cfg, "multivector", ["en"]))
    pids = searcher.pids(searcher.search(queries_for(cfg), 5)[1])
    assert mv["entry_stride"] == 10
    assert all(p.startswith("en-") for row in pids for p in row if p)


def test_ray_tasks_on_s3_build_the_same_index(built, local_ray, s3_bucket):
    cfg = scale_run(
        f"{s3_bucket}/run",
        Path(built.dataset.data_dir).parent,
        ray={"enabled": True},
    )
    build(cfg)
    for strategy in ("dense", "xqg", "multivector"):
        local = load_manifest(index_url(built, strategy))
        remote = load_manifest(index_url(cfg, strategy))
        assert [s["count"] for s in remote["shards"]] == [s["count"] for s in local["shards"]]
        queries = queries_for(built)
        a = InProcessIndex(index_url(built, strategy)).search(queries, 5)
        b = InProcessIndex(index_url(cfg, strategy)).search(queries, 5)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5)
    # evaluation's (shard x query batch) search on a pool of 2 actors for 3 shards, from S3,
    # ranks as the in-process reference: the same passages in the same order
    for strategy in ("dense", "xqg", "multivector"):
        assert offline_run(cfg, strategy, ray_cfg=cfg.ray, actors=2) == reference_run(
            built, strategy
        )


def reference_run(cfg, strategy: str, k: int = 7) -> dict[str, list[str]]:
    """qid -> ranked pids from `InProcessIndex`, every shard in this process."""
    table = PartitionedTable(RunPaths(cfg.root).embeddings(cfg.encoder.name, "queries")).read()
    searcher = InProcessIndex(index_url(cfg, strategy))
    _, ids = searcher.search(arrow_to_vectors(table["vector"]), k)
    return {
        qid: [pid for pid in pids if pid is not None]
        for qid, pids in zip(table["qid"].to_pylist(), searcher.pids(ids), strict=True)
    }


def offline_run(cfg, strategy: str, ray_cfg=None, actors: int = 1, k: int = 7):
    """qid -> ranked pids from evaluation's search, in batches of 5 queries."""
    table = PartitionedTable(RunPaths(cfg.root).embeddings(cfg.encoder.name, "queries")).read()
    run = search_offline(
        index_url(cfg, strategy),
        table.select(["qid", "vector"]),
        k,
        ray_cfg or cfg.ray,
        StageResources(actors=actors, num_cpus=0.5),
        5,
    )
    out: dict[str, list[str]] = {}
    for row in run.to_pylist():
        out.setdefault(row["qid"], []).append(row["pid"])
    return out


def test_evaluation_search_by_shard_and_batch_equals_the_in_process_reference(built):
    for strategy in ("dense", "xqg", "multivector"):
        want = reference_run(built, strategy)
        assert offline_run(built, strategy) == want
        assert len(want) > 5 and all(len(pids) == 7 for pids in want.values())
    # multivector: each passage once, although entries of one passage fill the top
    assert all(len(set(pids)) == 7 for pids in reference_run(built, "multivector").values())
