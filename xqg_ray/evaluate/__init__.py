"""Evaluation: retrieval metrics and significance tests as pure functions (see metrics.py)."""
