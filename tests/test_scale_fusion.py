"""xqg fused in the encoder actor: the dev tuning reads per-language sums and counts, and gives
exactly what mixing the per-query vectors gives; per-query vectors exist only for multivector."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tiny_run_config

from xqg_ray.evaluate import tuning
from xqg_ray.paths import RunPaths
from xqg_ray.schema import arrow_to_vectors
from xqg_ray.stages.augment import (
    mix_from_sums,
    row_positions,
    select_generated,
    sums_name,
    xqg_mix,
)
from xqg_ray.stages.pipeline import build
from xqg_ray.storage import PartitionedTable, exists, join


def _config(root: str, tiny_models, shared_data, strategies):
    return tiny_run_config(
        root,
        tiny_models,
        shared_data,
        ray={"enabled": False, "progress_bars": False},
        generator={
            "backend": "question_split",
            "languages": ["de", "en"],
            "queries_per_language": 3,
        },
        augment={"strategies": strategies},
        tuning={"dev_fraction": 0.3, "alphas": [0.01, 0.3], "reduces": ["sum", "mean"]},
        evaluate={"measures": ["R@1", "RR@10"]},
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_models, shared_data):
    cfg = _config(
        str(tmp_path_factory.mktemp("fusion") / "run"),
        tiny_models,
        shared_data,
        ["dense", "xqg", "multivector"],
    )
    build(cfg)
    return cfg


def todays_part(cfg, part: str) -> tuning.MixingPart:
    """A part as the tuning read it before the fusion: every per-query vector, summed per
    passage in float64 in table order (what `xqg_mix` does)."""
    mixing = tuning.read_mixing_part(cfg, part)
    url = RunPaths(cfg.root).embeddings(cfg.encoder.name, "generated-" + cfg.generator.name)
    generated = select_generated(
        PartitionedTable(url).read_part(part),
        cfg.augment.languages,
        cfg.augment.queries_per_language,
    )
    rows = row_positions(generated["pid"], mixing.pids.tolist())
    totals = np.zeros_like(mixing.query_sums)
    np.add.at(totals, rows, arrow_to_vectors(generated["vector"]).astype(np.float64))
    mixing.query_sums = totals
    mixing.query_counts = np.bincount(rows, minlength=len(mixing.ids))
    return mixing


def test_tuning_from_sums_equals_tuning_from_every_query_vector(built):
    cfg = built
    url = RunPaths(cfg.root).embeddings(cfg.encoder.name, "generated-" + cfg.generator.name)
    parts = sorted(PartitionedTable(RunPaths(cfg.root).collection).manifest()["parts"])
    counted = 0
    for part in parts:
        sums, today = tuning.read_mixing_part(cfg, part), todays_part(cfg, part)
        # entry by entry: the same counts, sums within float32 summation order
        np.testing.assert_array_equal(sums.query_counts, today.query_counts)
        counted += int(sums.query_counts.sum())
        np.testing.assert_allclose(sums.query_sums, today.query_sums, rtol=1e-6, atol=1e-6)
        generated = select_generated(
            PartitionedTable(url).read_part(part),
            cfg.augment.languages,
            cfg.augment.queries_per_language,
        )
        vectors = arrow_to_vectors(generated["vector"])
        rows = row_positions(generated["pid"], sums.pids.tolist())
        for reduce in ("sum", "mean"):
            for alpha in (0.01, 0.3):
                published = xqg_mix(sums.vectors, vectors, rows, alpha, reduce)
                remixed = mix_from_sums(
                    sums.vectors, sums.query_sums, sums.query_counts, alpha, reduce
                )
                np.testing.assert_allclose(remixed, published, rtol=1e-6, atol=1e-7)
    assert counted > 0
    # metric by metric: the whole tuning result is the same
    assert tuning.tune_xqg(cfg) == tuning.tune_xqg(cfg, todays_part)


def test_per_query_vectors_are_written_only_for_multivector(
    built, tmp_path, tiny_models, shared_data
):
    enc = built.encoder.name
    paths = RunPaths(built.root)
    per_query = paths.embeddings(enc, "generated-" + built.generator.name)
    assert PartitionedTable(per_query).is_complete()
    cfg = _config(str(tmp_path / "run"), tiny_models, shared_data, ["dense", "xqg"])
    report = build(cfg)
    paths = RunPaths(cfg.root)
    assert not exists(
        join(paths.embeddings(enc, "generated-" + cfg.generator.name), "_manifest.json")
    )
    sums = PartitionedTable(paths.embeddings(enc, sums_name(cfg)))
    assert sums.is_complete()
    stats = report["stages"]
    assert stats["augment-xqg"]["fused_into"] == "encode-generated"
    xqg_bytes = PartitionedTable(paths.embeddings(enc, "xqg")).manifest()["bytes"]
    dense_bytes = PartitionedTable(paths.embeddings(enc, "passages")).manifest()["bytes"]
    assert xqg_bytes <= 1.2 * dense_bytes
    # the same passages and generated queries give the same xqg entries as the multivector run
    for run in (built, cfg):
        assert PartitionedTable(RunPaths(run.root).embeddings(enc, "xqg")).is_complete()
    a = PartitionedTable(RunPaths(built.root).embeddings(enc, "xqg")).read()
    b = PartitionedTable(paths.embeddings(enc, "xqg")).read()
    assert a.drop_columns(["vector"]).equals(b.drop_columns(["vector"]))
    np.testing.assert_array_equal(arrow_to_vectors(a["vector"]), arrow_to_vectors(b["vector"]))
    # tuning reads the sums: it runs without any per-query vector
    result = tuning.tune_xqg(cfg)
    assert result["queries_per_passage"]["max"] > 0
