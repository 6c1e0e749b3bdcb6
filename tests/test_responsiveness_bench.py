"""The responsiveness benchmark runs end to end and reports every figure against its goal."""

from __future__ import annotations

import json

import pytest

from xqg_ray.bench import responsiveness


@pytest.mark.slow
def test_responsiveness_reports_every_figure(tmp_path, shared_data):
    out = tmp_path / "r.json"
    report = responsiveness.main(
        [
            "--data-dir",
            str(shared_data / "xquad"),
            "--repeats",
            "1",
            "--n",
            "2000",
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == report
    assert set(report["seconds"]) == {
        "xquad_load",
        "serve_up",
        "serve_stop_after_ctrl_c",
        "gpu_check_refusal",
    }
    assert all(value > 0 for value in report["seconds"].values())
    assert set(report["met"]) == set(responsiveness.GOALS_S)
