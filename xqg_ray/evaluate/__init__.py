"""The evaluation: searches of every setting (offline and through the service), their scoring and
tables, and xqg's tuning on dev (see driver.py and docs/architecture.md, "Layers")."""
