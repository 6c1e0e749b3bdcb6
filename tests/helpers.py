"""Helpers tests import (`from helpers import ...`); fixtures live in conftest.py."""

from __future__ import annotations

from pathlib import Path


def tiny_run_config(root: str, models: dict[str, str], data_dir: Path, **sections):
    """A small XQuAD run (12 paragraphs, en+de) with the tiny models; sections override keys."""
    from xqg_ray.config import RunConfig

    data = {
        "root": root,
        "dataset": {
            "name": "xquad",
            "data_dir": str(data_dir / "xquad"),
            "languages": ["de", "en"],
            "max_passages": 12,
        },
        "encoder": {"backend": "hf", "model": models["bert"], "batch_size": 8},
        "generator": {
            "backend": "hf",
            "model": models["mt5"],
            "languages": ["de", "en"],
            "queries_per_language": 2,
            "max_new_tokens": 8,
            "batch_size": 8,
        },
        "collection": {"passage_languages": ["en"], "passages_per_part": 4},
        "stages": {"encode": {"num_cpus": 0.5}, "generate": {"num_cpus": 0.5}},
        "ray": {"progress_bars": False},
        "index": {"shards": 2},
        "search": {"depth": 10},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return RunConfig.model_validate(data)
