"""The batch pipeline with the tiny mT5 and BERT: in-process, on Ray Data, resumed, on S3."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from helpers import tiny_run_config

from xqg_ray.config import RayConfig, StageResources
from xqg_ray.errors import ConfigError, InputError
from xqg_ray.evaluate.driver import evaluate_settings
from xqg_ray.index.shards import load_manifest
from xqg_ray.paths import RunPaths
from xqg_ray.schema import arrow_to_vectors, vectors_to_arrow
from xqg_ray.stages.generate import generate_part
from xqg_ray.stages.pipeline import build
from xqg_ray.stages.runner import run_parts
from xqg_ray.storage import PartitionedTable, read_json

STRATEGIES = ("dense", "xqg", "expand", "multivector")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_models, shared_data):
    """One undisturbed in-process run: the reference the other runs must reproduce."""
    cfg = tiny_run_config(
        str(tmp_path_factory.mktemp("local") / "run"),
        tiny_models,
        shared_data,
        ray={"enabled": False, "progress_bars": False},
    )
    report = build(cfg)
    return cfg, report


def tables(cfg, what: str) -> pa.Table:
    paths = RunPaths(cfg.root)
    urls = {
        "generated": paths.generated(cfg.generator.name),
        **{
            s: paths.embeddings(cfg.encoder.name, "passages" if s == "dense" else s)
            for s in STRATEGIES
        },
        "queries": paths.embeddings(cfg.encoder.name, "queries"),
    }
    return PartitionedTable(urls[what]).read()


def assert_same_outputs(cfg_a, cfg_b) -> None:
    """Same generated text, same ids, vectors equal up to float reordering across threads."""
    assert tables(cfg_a, "generated").equals(tables(cfg_b, "generated"))
    for what in (*STRATEGIES, "queries"):
        a, b = tables(cfg_a, what), tables(cfg_b, what)
        assert a.drop_columns(["vector"]).equals(b.drop_columns(["vector"])), what
        np.testing.assert_allclose(
            arrow_to_vectors(a["vector"]), arrow_to_vectors(b["vector"]), rtol=1e-4, atol=1e-5
        )


def test_local_run_builds_every_strategy(local_run):
    cfg, report = local_run
    passages = PartitionedTable(RunPaths(cfg.root).collection).read()
    assert passages.num_rows == 12 and set(passages["lang"].to_pylist()) == {"en"}
    generated = tables(cfg, "generated")
    # up to 2 languages x 2 queries per passage; empty generations are dropped, never kept
    assert 0 < generated.num_rows <= 12 * 2 * 2
    assert all(text.strip() for text in generated["text"].to_pylist())
    assert set(generated["lang"].to_pylist()) <= {"de", "en"}
    for strategy in STRATEGIES:
        manifest = load_manifest(RunPaths(cfg.root).index(cfg.encoder.name, strategy))
        expected = 12 + generated.num_rows if strategy == "multivector" else 12
        assert manifest["n_total"] == expected, strategy
        assert manifest["meta"]["strategy"] == strategy
    dense = arrow_to_vectors(tables(cfg, "dense")["vector"])
    xqg = arrow_to_vectors(tables(cfg, "xqg")["vector"])
    assert not np.allclose(dense, xqg)  # the queries moved the passages
    stats = read_json(RunPaths(cfg.root).stats("generate"))
    assert stats["parts"] == 3 and stats["parts_computed"] == 3 and stats["rows_in"] == 12


def published_xqg(cfg, passages: pa.Table, generated: PartitionedTable, part: str) -> np.ndarray:
    """e'_p = (1 - alpha) e_p + alpha * (sum or mean of its queries' e_q), one passage at a time,
    written out here rather than taken from the product's own mixing code."""
    queries = generated.read_part(part)
    languages = cfg.augment.languages or cfg.generator.languages
    per_language = cfg.augment.queries_per_language or cfg.generator.queries_per_language
    own: dict[str, list[np.ndarray]] = {}
    for pid, lang, k, vector in zip(
        queries["pid"].to_pylist(),
        queries["lang"].to_pylist(),
        queries["k"].to_pylist(),
        arrow_to_vectors(queries["vector"]),
        strict=True,
    ):
        if lang in languages and k < per_language:
            own.setdefault(pid, []).append(vector.astype(np.float64))
    alpha = cfg.augment.alpha
    rows = []
    for pid, vector in zip(
        passages["pid"].to_pylist(), arrow_to_vectors(passages["vector"]), strict=True
    ):
        mine = own.get(pid, [])
        total = np.sum(mine, axis=0) if mine else np.zeros_like(vector, dtype=np.float64)
        if cfg.augment.reduce == "mean" and mine:
            total = total / len(mine)
        rows.append((1 - alpha) * vector.astype(np.float64) + alpha * total)
    return np.array(rows)


def test_fused_xqg_entries_equal_mixing_the_stored_query_vectors(local_run):
    """The encoder actor mixes xqg as it encodes: entry by entry, the xqg table equals the
    published formula computed here, passage by passage, from the stored per-query vectors; the
    sums re-mix it within float32 summation order; the dense entries are the passages' own
    encodings."""
    from xqg_ray.models.encoder import load_encoder
    from xqg_ray.stages.augment import mix_from_sums, passage_sums, sums_name
    from xqg_ray.stages.encode import passage_input

    cfg, _ = local_run
    paths = RunPaths(cfg.root)
    enc = cfg.encoder.name
    read = {
        what: PartitionedTable(paths.embeddings(enc, what))
        for what in ("passages", "xqg", sums_name(cfg), "generated-" + cfg.generator.name)
    }
    collection = PartitionedTable(paths.collection)
    encoder = load_encoder(cfg.encoder)
    for part in collection.committed_parts():
        passages = read["passages"].read_part(part)
        texts = collection.read_part(part)
        direct = encoder.encode_passages(
            [
                passage_input(t, x)
                for t, x in zip(texts["title"].to_pylist(), texts["text"].to_pylist(), strict=True)
            ]
        )
        np.testing.assert_allclose(
            arrow_to_vectors(passages["vector"]), direct, rtol=1e-5, atol=1e-6
        )
        stored = read["xqg"].read_part(part)
        assert stored["id"].equals(passages["id"]) and stored["pid"].equals(passages["pid"])
        expected = published_xqg(cfg, passages, read["generated-" + cfg.generator.name], part)
        np.testing.assert_allclose(
            arrow_to_vectors(stored["vector"]), expected, rtol=1e-5, atol=1e-6
        )
        totals, counts = passage_sums(passages, read[sums_name(cfg)].read_part(part), None)
        remixed = mix_from_sums(
            arrow_to_vectors(passages["vector"]),
            totals,
            counts,
            cfg.augment.alpha,
            cfg.augment.reduce,
        )
        np.testing.assert_allclose(
            remixed, arrow_to_vectors(stored["vector"]), rtol=1e-6, atol=1e-7
        )


def test_evaluate_writes_runs_and_metrics(local_run):
    cfg, _ = local_run
    metrics = evaluate_settings(cfg)
    assert set(metrics["strategies"]) == set(STRATEGIES)
    for summary in metrics["strategies"].values():
        assert set(summary["per_lang"]) == {"de", "en"}
        for value in summary["macro"].values():
            assert 0.0 <= value <= 1.0
    assert "ttest_vs_dense" in metrics["strategies"]["xqg"]
    out = RunPaths(cfg.root).results(cfg.evaluate.experiment)
    with open(f"{out}/dense.run") as handle:
        first = handle.readline().split()
    assert first[1] == "Q0" and first[3] == "1" and first[2].startswith("en-")


def test_rerun_skips_complete_stages_and_resumes_missing_parts(local_run, tmp_path):
    cfg, _ = local_run
    again = build(cfg)
    assert all(s.get("skipped") for s in again["stages"].values())

    import shutil

    copy = cfg.model_copy(update={"root": str(tmp_path / "copy")})
    shutil.copytree(cfg.root, copy.root)
    generated = PartitionedTable(RunPaths(copy.root).generated(copy.generator.name))
    xqg = PartitionedTable(RunPaths(copy.root).embeddings(copy.encoder.name, "xqg"))
    for table, part in ((generated, "00001"), (xqg, "00002")):
        (tmp_path / "copy").joinpath(table.part_url(part)[len(copy.root) + 1 :]).unlink()
        (tmp_path / "copy").joinpath(table.manifest_url[len(copy.root) + 1 :]).unlink()
    resumed = build(copy)
    assert resumed["stages"]["generate"]["parts_computed"] == 1
    # the sums are complete: xqg is re-mixed from them (one part), nothing is re-encoded
    assert resumed["stages"]["encode-generated"].get("skipped")
    assert resumed["stages"]["augment-xqg"]["parts_computed"] == 1
    assert resumed["stages"]["encode-passages"].get("skipped")
    assert_same_outputs(cfg, copy)


def test_changed_parameters_are_refused_not_mixed(local_run):
    cfg, _ = local_run
    changed = cfg.model_copy(deep=True)
    changed.generator.queries_per_language = 3
    with pytest.raises(ConfigError, match="use a new run root"):
        build(changed)


def test_ray_data_run_on_s3_matches_local(local_run, local_ray, s3_bucket):
    """The same run on Ray Data (two encode actors) with an s3:// run root: identical tables,
    and the evaluation writes its metrics to S3."""
    cfg, _ = local_run
    on_ray = tiny_run_config(
        f"{s3_bucket}/run",
        {"bert": cfg.encoder.model, "mt5": cfg.generator.model},
        _data_root(cfg),
        stages={"encode": {"actors": 2, "num_cpus": 0.5}},
    )
    report = build(on_ray)
    assert report["stages"]["generate"]["backend"] == "ray-data"
    metrics = evaluate_settings(on_ray)
    assert_same_outputs(cfg, on_ray)
    assert read_json(f"{s3_bucket}/run/results/main/metrics.json")["passages"] == 12
    assert set(metrics["strategies"]) == set(STRATEGIES)


def test_more_gpus_than_the_cluster_has_is_refused(local_run, local_ray, tmp_path):
    cfg, _ = local_run
    greedy = tiny_run_config(
        str(tmp_path / "gpu"),
        {"bert": cfg.encoder.model, "mt5": cfg.generator.model},
        _data_root(cfg),
        stages={"generate": {"num_gpus": 1}},
    )
    with pytest.raises(
        ConfigError, match=r"stages.generate.num_gpus=1.0 but the Ray cluster has 0"
    ):
        build(greedy)


def test_corrupt_part_and_dimension_mismatch_are_named(local_run, tmp_path):
    cfg, _ = local_run
    import shutil

    copy = cfg.model_copy(update={"root": str(tmp_path / "bad")})
    shutil.copytree(cfg.root, copy.root)
    paths = RunPaths(copy.root)
    # a dimension that differs between parts of one embeddings table
    xqg = PartitionedTable(paths.embeddings(copy.encoder.name, "xqg"))
    part = xqg.read_part("00001")
    wrong = part.set_column(2, "vector", vectors_to_arrow(np.zeros((part.num_rows, 3))))
    xqg.write_part("00001", wrong)
    with pytest.raises(InputError, match="incompatible schemas"):
        xqg.read()
    # a corrupt part: the error names the file, the committed parts stay readable
    generated = PartitionedTable(paths.generated(copy.generator.name))
    with open(generated.part_url("00000"), "wb") as handle:
        handle.write(b"garbage")
    with pytest.raises(InputError, match=r"part-00000\.parquet.*corrupt"):
        generated.read()
    assert generated.read_part("00001").num_rows > 0


def test_empty_generations_are_dropped_and_counted_out():
    passages = pa.table({"pid": ["a", "b"], "title": ["", ""], "text": ["x", "y"]})

    def query_fn(part: pa.Table, lang: str) -> list[list[str]]:
        return [["", "  ", "real question"], []]

    table = generate_part(query_fn, passages, ["de"])
    assert table.to_pylist() == [{"pid": "a", "lang": "de", "k": 0, "text": "real question"}]


def _data_root(cfg):
    from pathlib import Path

    return Path(cfg.dataset.data_dir).parent


@pytest.mark.parametrize("actor_pool", [True, False])
def test_a_part_tasks_own_error_reaches_the_driver_as_itself(local_ray, actor_pool):
    class FailsOnPartTwo:  # defined here so Ray's workers get it by value
        """Rejects its input the way the stages do: an InputError naming the part and row."""

        loads_model = actor_pool  # an actor pool (the model stages) or plain tasks (the others)

        def __call__(self, part: str) -> dict:
            if part == "00002":
                raise InputError(f"part {part}: row 7, field 'text' is empty")
            return {"part": part}

    with pytest.raises(InputError) as caught:
        run_parts(
            "fails",
            FailsOnPartTwo,
            ["00001", "00002", "00003"],
            StageResources(num_cpus=0.5),
            RayConfig(progress_bars=False),
        )
    assert str(caught.value) == "part 00002: row 7, field 'text' is empty"
