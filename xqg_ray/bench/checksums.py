"""The checksums a run root's own files name, shared by the fault scripts that verify them.

A part record names its part, a table manifest every part, a shard record and an index manifest
every file they list; each with the sha256 of the bytes written.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any


def named_checksums(rel: str, document: Any) -> Iterator[tuple[str, str]]:
    """(file, sha256) pairs that a part record, table manifest, shard record or index manifest
    names, paths relative to the run root."""
    from xqg_ray.storage import MANIFEST, RECORD_PATTERN

    folder, name = posixpath.split(rel)
    if match := RECORD_PATTERN.match(name):
        yield posixpath.join(folder, f"part-{match['name']}.parquet"), document["sha256"]
    elif name == MANIFEST:
        for part, record in document.get("parts", {}).items():
            yield posixpath.join(folder, f"part-{part}.parquet"), record["sha256"]
    else:
        stack = [document]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                if isinstance(item.get("file"), str) and isinstance(item.get("sha256"), str):
                    yield posixpath.join(folder, item["file"]), item["sha256"]
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
