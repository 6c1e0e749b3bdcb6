"""The `xqg-ray` CLI: help for every verb, exit status 2 with the bad input named, no
half-written output that looks complete."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xqg_ray.cli import app, config_reference
from xqg_ray.storage import PartitionedTable

runner = CliRunner()
VERBS = ("demo", "ingest", "build", "evaluate", "pipeline", "serve", "search", "config")


def test_help_lists_and_explains_every_verb():
    out = runner.invoke(app, ["--help"]).output
    for verb in VERBS:
        assert verb in out
    build_help = runner.invoke(app, ["build", "--help"]).output
    assert "--config" in build_help and "--set" in build_help and "--no-ray" in build_help


def test_console_script_is_installed():
    exe = shutil.which("xqg-ray", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the xqg-ray console script is not installed next to this Python"
    done = subprocess.run(
        [exe, "config", "--set", "index.shards=3"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "shards: 3" in done.stdout


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("augment.strategies=[dense, colbert]", "augment.strategies"),
        ("encoder.backend=onnx", "encoder.backend"),
        ("generator.top_k=0", "generator.top_k"),
        ("encoder.batchsize=3", "encoder.batchsize"),
    ],
)
def test_bad_config_exits_2_naming_the_field(override, named):
    result = runner.invoke(app, ["config", "--set", override])
    assert result.exit_code == 2
    assert named in result.output and "Traceback" not in result.output


def test_malformed_yaml_is_one_line_for_run_and_serve_configs(tmp_path):
    from xqg_ray.bench.sweep import load_sweep_config
    from xqg_ray.errors import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("applications:\n  - args: {index: [unclosed\n")
    for verb in (["config", "--config", str(bad)], ["serve", "--config", str(bad)]):
        result = runner.invoke(app, verb)
        assert result.exit_code == 2, verb
        assert "bad.yaml: not valid YAML" in result.output and "Traceback" not in result.output
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    result = runner.invoke(app, ["serve", "--config", str(listed)])
    assert result.exit_code == 2 and "top level must be a mapping" in result.output
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_sweep_config(str(bad))


def test_malformed_dataset_exits_2_and_leaves_no_complete_table(tmp_path, shared_data):
    data = tmp_path / "xquad"
    data.mkdir()
    shutil.copy(shared_data / "xquad" / "xquad.en.json", data / "xquad.en.json")
    broken = (shared_data / "xquad" / "xquad.de.json").read_text()[:5000]
    (data / "xquad.de.json").write_text(broken)
    root = tmp_path / "run"
    result = runner.invoke(
        app, ["ingest", "--root", str(root), "--set", f"dataset.data_dir={data}"]
    )
    assert result.exit_code == 2
    assert "xquad.de.json" in result.output and "malformed JSON" in result.output
    for table in ("passages", "queries", "qrels"):
        assert not PartitionedTable(str(root / "corpus" / table)).is_complete()


def test_missing_data_dir_and_bucket_are_named(tmp_path, s3_server):
    missing = tmp_path / "nope"
    result = runner.invoke(
        app, ["ingest", "--root", str(tmp_path / "r"), "--set", f"dataset.data_dir={missing}"]
    )
    assert result.exit_code == 2 and str(missing) in result.output
    result = runner.invoke(app, ["ingest", "--root", "s3://no-such-bucket-abc/run"])
    assert result.exit_code == 2 and "no-such-bucket-abc" in result.output


def test_ingest_writes_corpus_tables(tmp_path, shared_data):
    root = tmp_path / "run"
    result = runner.invoke(
        app, ["ingest", "--root", str(root), "--set", "dataset.languages=[en, th]"]
    )
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    assert counts == {"passages": 480, "queries": 2380, "qrels": 2380 * 2}


@pytest.mark.parametrize("kind", ["run", "serve", "sweep"])
def test_config_reference_is_generated_from_the_schema_and_matches_the_docs(kind):
    table = config_reference(kind, markdown=True)
    rows = table.splitlines()[2:]
    assert rows and all(not row.endswith("|  |") for row in rows), "a setting has no description"
    docs = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    marker = f"<!-- generated: xqg-ray config --explain --kind {kind} --markdown -->\n"
    generated = docs.split(marker, 1)[1].split("\n<!-- end generated -->", 1)[0]
    assert generated == table, f"docs/configuration.md is stale: regenerate the {kind} table"


def test_config_explain_prints_every_key_with_its_default():
    result = runner.invoke(app, ["config", "--explain", "--kind", "serve"])
    assert result.exit_code == 0, result.output
    assert "max_queued_requests = 16\n    Load shedding" in result.output
    assert "autoscaling.max_replicas = 2" in result.output
    bad = runner.invoke(app, ["config", "--explain", "--kind", "nope"])
    assert bad.exit_code == 2 and "--kind 'nope'" in bad.output
