"""Encode stage: passages, evaluation queries, generated queries and expanded passages.

Each kind reads part N of its source and writes part N of its embeddings table, with its own max
length (queries 32, passages 128, `expand` longer: docs/architecture.md, "Data flow").

The actor that encodes part N's generated queries also folds them in on the spot (the fused xqg
path): it reads part N's passage vectors and writes part N of the `xqg` entries, plus the
per-passage, per-language sum and count of the query vectors (`generated-<gen>-sums`), from
which any alpha, sum/mean or language subset can be re-mixed without re-encoding. The per-query
vectors themselves are written only when `multivector` is among the strategies.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.config import RunConfig
from xqg_ray.paths import RunPaths, generated_vectors
from xqg_ray.schema import arrow_to_vectors, vectors_to_arrow
from xqg_ray.stages.augment import (
    expand_text,
    language_sums,
    select_generated,
    sums_name,
    xqg_entries,
)
from xqg_ray.stages.runner import part_result
from xqg_ray.storage import PartitionedTable

ENCODE_KINDS = ("passages", "queries", "generated", "expand")


def passage_input(title: str, text: str) -> str:
    """The retriever's passage input, `title + " " + text` as in the published code."""
    return f"{title} {text}" if title else text


def expanded_inputs(passages: pa.Table, generated: pa.Table) -> list[str]:
    """Each passage's input with its generated queries appended, in generated (lang, k) order."""
    by_pid: dict[str, list[str]] = {}
    ordered = generated.sort_by([("lang", "ascending"), ("k", "ascending")])
    for pid, text in zip(ordered["pid"].to_pylist(), ordered["text"].to_pylist(), strict=True):
        by_pid.setdefault(pid, []).append(text)
    return [
        expand_text(passage_input(title, text), by_pid.get(pid, []))
        for pid, title, text in zip(
            passages["pid"].to_pylist(),
            passages["title"].to_pylist(),
            passages["text"].to_pylist(),
            strict=True,
        )
    ]


def encode_unique(encode: Callable[[list[str]], np.ndarray], texts: list[str]) -> np.ndarray:
    """Encode each distinct text once: sampled generators (and the stand-in's draws with
    replacement) repeat queries, and a repeat's vector is the same."""
    unique = list(dict.fromkeys(texts))
    position = {text: i for i, text in enumerate(unique)}
    return encode(unique)[np.fromiter((position[t] for t in texts), np.int64, len(texts))]


def with_vectors(keys: pa.Table, vectors) -> pa.Table:
    return keys.append_column("vector", vectors_to_arrow(vectors))


class EncodeTask:
    """Encodes one part of one kind; built once per actor, so the model loads once."""

    loads_model = True

    def __init__(self, cfg: RunConfig, kind: str):
        from xqg_ray.models.encoder import load_encoder

        if kind not in ENCODE_KINDS:
            raise ValueError(f"unknown encode kind {kind!r}: expected one of {ENCODE_KINDS}")
        self.kind = kind
        self.cfg = cfg
        paths = RunPaths(cfg.root)
        self.encoder = load_encoder(cfg.encoder)
        self.engine = getattr(self.encoder, "engine", cfg.encoder.backend)
        generated = paths.generated(cfg.generator.name)
        sources = {
            "passages": paths.collection,
            "queries": paths.queryset,
            "generated": generated,
            "expand": paths.collection,
        }
        self.source = PartitionedTable(sources[kind])
        self.generated = PartitionedTable(generated)
        target = generated_vectors(cfg.generator.name) if kind == "generated" else kind
        self.target = PartitionedTable(paths.embeddings(cfg.encoder.name, target))
        if kind == "generated":
            strategies = cfg.augment.strategies
            enc = cfg.encoder.name
            self.passages = PartitionedTable(paths.embeddings(enc, "passages"))
            self.sums = PartitionedTable(paths.embeddings(enc, sums_name(cfg)))
            self.xqg = (
                PartitionedTable(paths.embeddings(enc, "xqg")) if "xqg" in strategies else None
            )
            self.per_query = "multivector" in strategies

    def encode(self, part: str, rows: pa.Table) -> pa.Table:
        if self.kind == "queries":
            vectors = self.encoder.encode_queries(rows["text"].to_pylist())
            return with_vectors(rows.select(["id", "qid", "lang"]), vectors)
        if self.kind == "generated":
            vectors = encode_unique(self.encoder.encode_queries, rows["text"].to_pylist())
            return with_vectors(rows.select(["pid", "lang", "k"]), vectors)
        if self.kind == "passages":
            texts = [
                passage_input(t, x)
                for t, x in zip(rows["title"].to_pylist(), rows["text"].to_pylist(), strict=True)
            ]
            vectors = self.encoder.encode_passages(texts)
            return with_vectors(rows.select(["id", "pid"]), vectors)
        augment = self.cfg.augment
        generated = select_generated(
            self.generated.read_part(part),
            augment.languages,
            augment.queries_per_language,
        )
        generated = generated.filter(pc.is_in(generated["pid"], rows["pid"]))
        vectors = self.encoder.encode_passages(
            expanded_inputs(rows, generated), max_length=augment.expand_max_length
        )
        return with_vectors(rows.select(["id", "pid"]), vectors)

    def fused(self, part: str, rows: pa.Table) -> tuple[dict, int, float]:
        """Encode part N's generated queries; write its xqg entries, its per-language sums and
        (multivector only) the per-query vectors. Returns the records of what was written, the
        passages mixed and the seconds spent mixing and writing the mixed tables."""
        vectors = encode_unique(self.encoder.encode_queries, rows["text"].to_pylist())
        encoded = with_vectors(rows.select(["pid", "lang", "k"]), vectors)
        passages = self.passages.read_part(part)
        written = {}
        start = time.perf_counter()
        if self.xqg is not None:
            entries = xqg_entries(self.cfg, passages, encoded)
            written[self.xqg.url] = self.xqg.write_part(part, entries)
        kept = select_generated(encoded, None, self.cfg.augment.queries_per_language)
        sums = language_sums(passages, kept, arrow_to_vectors(kept["vector"]))
        written[self.sums.url] = self.sums.write_part(part, sums)
        mix_seconds = time.perf_counter() - start
        if self.per_query:
            written[self.target.url] = self.target.write_part(part, encoded)
        return written, passages.num_rows, mix_seconds

    def __call__(self, part: str) -> dict:
        rows = self.source.read_part(part)
        if self.kind == "generated":
            written, passages, mix_seconds = self.fused(part, rows)
            return part_result(
                part,
                rows.num_rows,
                rows.num_rows,
                written,
                mix_passages=passages,
                mix_seconds=mix_seconds,
                engine=self.engine,
            )
        table = self.encode(part, rows)
        record = self.target.write_part(part, table)
        return part_result(
            part, rows.num_rows, table.num_rows, {self.target.url: record}, engine=self.engine
        )
