"""Generate stage: n queries per passage for each target language, one part at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyarrow as pa

from xqg_ray.config import RunConfig
from xqg_ray.models.question_split import QuestionSplitGenerator
from xqg_ray.paths import RunPaths
from xqg_ray.schema import GENERATED
from xqg_ray.stages.roles import run_roles
from xqg_ray.stages.runner import part_result
from xqg_ray.storage import PartitionedTable, read_table

# (passages of one part, ISO language) -> one list of generated queries per passage
QueryFn = Callable[[pa.Table, str], list[list[str]]]


def generate_part(query_fn: QueryFn, passages: pa.Table, languages: Sequence[str]) -> pa.Table:
    """All generated queries of a part as GENERATED rows.

    Empty or whitespace-only generations are dropped (a sampled decoder can emit them); `k` keeps
    the position among the kept queries, so `k < n` always selects the first n usable ones.
    """
    pids: list[str] = []
    langs: list[str] = []
    ks: list[int] = []
    texts: list[str] = []
    for lang in languages:
        outputs = query_fn(passages, lang)
        if len(outputs) != passages.num_rows:
            raise RuntimeError(
                f"generator returned {len(outputs)} lists for {passages.num_rows} passages"
            )
        for pid, queries in zip(passages["pid"].to_pylist(), outputs, strict=True):
            kept = [q.strip() for q in queries if q and q.strip()]
            for k, text in enumerate(kept):
                pids.append(pid)
                langs.append(lang)
                ks.append(k)
                texts.append(text)
    return pa.table({"pid": pids, "lang": langs, "k": ks, "text": texts}, schema=GENERATED)


def build_query_fn(cfg: RunConfig) -> tuple[QueryFn, str]:
    """The configured generator as a QueryFn, and the engine it runs on (recorded in the stage's
    stats): an HF seq2seq model on its fastest engine, or the question-split stand-in."""
    gen = cfg.generator
    if gen.backend == "question_split":
        paths = RunPaths(cfg.root)
        standin = QuestionSplitGenerator(
            read_table(paths.corpus("queries")),
            read_table(paths.corpus("qrels")),
            run_roles(cfg),
            gen.queries_per_language,
            cfg.split.seed,
        )
        return (
            lambda passages, lang: standin.generate_for(passages["pid"].to_pylist(), lang),
            standin.engine,
        )
    from xqg_ray.models.generator import load_generator

    model = load_generator(gen)
    return (
        lambda passages, lang: model.generate(
            passages["title"].to_pylist(), passages["text"].to_pylist(), lang
        ),
        getattr(model, "engine", gen.backend),
    )


class GenerateTask:
    """Reads collection part N, writes generated part N; built once per actor (loads the model)."""

    loads_model = True

    def __init__(self, cfg: RunConfig):
        paths = RunPaths(cfg.root)
        self.languages = cfg.generator.languages
        self.source = PartitionedTable(paths.collection)
        self.target = PartitionedTable(paths.generated(cfg.generator.name))
        self.query_fn, self.engine = build_query_fn(cfg)

    def __call__(self, part: str) -> dict:
        passages = self.source.read_part(part)
        generated = generate_part(self.query_fn, passages, self.languages)
        record = self.target.write_part(part, generated)
        return part_result(
            part,
            passages.num_rows,
            generated.num_rows,
            {self.target.url: record},
            engine=self.engine,
        )
