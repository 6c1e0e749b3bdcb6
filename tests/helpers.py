"""Helpers tests import (`from helpers import ...`); fixtures live in conftest.py."""

from __future__ import annotations

from pathlib import Path


def tiny_run_config(root: str, models: dict[str, str], data_dir: Path, **sections):
    """A small XQuAD run (12 paragraphs, en+de) with the tiny models; sections override keys."""
    from xqg_ray.testing.tiny import tiny_run_config as tiny

    return tiny(root, models, str(data_dir / "xquad"), **sections)
