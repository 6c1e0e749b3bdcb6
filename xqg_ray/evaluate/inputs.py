"""What the evaluation reads from a built run root: the build it needs, and its inputs.

The driver holds query-sized tables only: of the collection it reads the passage count per
language, the judged passages' languages and, for R@kt, the texts of the ranked passages, each
part by part.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from xqg_ray.config import RunConfig
from xqg_ray.datasets.splits import TEST, query_groups, with_role
from xqg_ray.errors import ConfigError, InputError
from xqg_ray.evaluate.settings import Languages
from xqg_ray.index.shards import load_manifest
from xqg_ray.paths import RunPaths
from xqg_ray.stages.index import current_manifest, entries_url, index_meta, index_url
from xqg_ray.stages.roles import run_roles
from xqg_ray.storage import PartitionedTable, exists, join, read_table

BUILD_HINT = (
    "run the build with the same config first: `python jobs/build_index.py --config <config>` "
    "(or `xqg-ray build --config <config>`)"
)


@dataclass
class RunInputs:
    """What every setting reads from a built run root, read once: query-sized tables, and of
    the collection only its size per language and the languages of the judged passages."""

    passage_counts: dict[str, int]  # indexed passages per language
    judged_passages: pa.Table  # pid, lang of the passages the qrels name
    queries: pa.Table  # qid, lang, text of every evaluation query
    vectors: pa.Table  # qid, lang, vector of the same queries
    qrels: pa.Table
    answers: dict[str, list[str]]
    groups: dict[str, str]  # qid -> question group: the unit of the pooled paired tests

    @property
    def passage_languages(self) -> list[str]:
        return sorted(self.passage_counts)

    @property
    def query_languages(self) -> list[str]:
        return sorted(set(self.queries["lang"].to_pylist()))


def require_build(cfg: RunConfig) -> None:
    """Every index and table the evaluation reads must exist, built with this config."""
    for strategy in cfg.augment.strategies:
        url = index_url(cfg, strategy)
        if not exists(join(url, "manifest.json")):
            raise InputError(f"{url}: no {strategy!r} index (manifest.json missing): {BUILD_HINT}")
        if current_manifest(url, index_meta(cfg, strategy)) is None:
            raise ConfigError(
                f"{url} was built with other parameters than this config asks for "
                f"({load_manifest(url).get('meta')}): evaluate with the build's config, or "
                "rebuild under a new run root"
            )
    paths = RunPaths(cfg.root)
    tables = [paths.collection, paths.queryset, paths.embeddings(cfg.encoder.name, "queries")]
    tables += [entries_url(cfg, strategy) for strategy in cfg.augment.strategies]
    for url in tables:
        if not PartitionedTable(url).is_complete():
            raise InputError(f"{url}: missing or incomplete: {BUILD_HINT}")


def query_answers(cfg: RunConfig) -> dict[str, list[str]]:
    """qid -> answer strings (what R@kt looks for), for the queries that have any."""
    corpus_queries = read_table(RunPaths(cfg.root).corpus("queries"))
    if "answers" not in corpus_queries.column_names:
        return {}
    return {
        qid: values
        for qid, values in zip(
            corpus_queries["qid"].to_pylist(), corpus_queries["answers"].to_pylist(), strict=True
        )
        if values
    }


def query_group_map(cfg: RunConfig) -> dict[str, str]:
    """qid -> question group of every corpus query (itself where the dataset has none)."""
    return query_groups(read_table(RunPaths(cfg.root).corpus("queries")))


def collection_languages(cfg: RunConfig) -> dict[str, int]:
    """Indexed passages per language, counted part by part in Arrow (never a corpus-sized
    Python list)."""
    collection = PartitionedTable(RunPaths(cfg.root).collection)
    counts: dict[str, int] = {}
    for part in sorted(collection.manifest()["parts"]):
        for item in pc.value_counts(collection.read_part(part, columns=["lang"])["lang"]):
            lang = item["values"].as_py()
            counts[lang] = counts.get(lang, 0) + item["counts"].as_py()
    return counts


def passage_languages(cfg: RunConfig) -> list[str]:
    return sorted(collection_languages(cfg))


def judged_passages(cfg: RunConfig, qrels: pa.Table) -> pa.Table:
    """pid, lang of the indexed passages the qrels name, read part by part."""
    collection = PartitionedTable(RunPaths(cfg.root).collection)
    wanted = qrels["pid"].unique()
    tables = [
        table.filter(pc.is_in(table["pid"], value_set=wanted))
        for table in (
            collection.read_part(part, columns=["pid", "lang"])
            for part in sorted(collection.manifest()["parts"])
        )
    ]
    return pa.concat_tables(tables) if tables else pa.table({"pid": [], "lang": []})


def read_inputs(cfg: RunConfig) -> RunInputs:
    paths = RunPaths(cfg.root)
    queries = PartitionedTable(paths.queryset).read(columns=["qid", "lang", "text"])
    vectors = PartitionedTable(paths.embeddings(cfg.encoder.name, "queries")).read(
        columns=["qid", "lang", "vector"]
    )
    if cfg.tuning.dev_fraction > 0:  # dev queries choose settings; only test ones are reported
        roles = run_roles(cfg)
        queries, vectors = with_role(queries, roles, [TEST]), with_role(vectors, roles, [TEST])
    qrels = read_table(paths.corpus("qrels"))
    return RunInputs(
        passage_counts=collection_languages(cfg),
        judged_passages=judged_passages(cfg, qrels),
        queries=queries,
        vectors=vectors,
        qrels=qrels,
        answers=query_answers(cfg),
        groups=query_group_map(cfg),
    )


def in_languages(table: pa.Table, langs: list[str] | Languages) -> pa.Table:
    """The rows of `table` whose `lang` is one of `langs`."""
    return table.filter(pc.is_in(table["lang"], value_set=pa.array(list(langs), pa.string())))


def ranked_passage_texts(
    cfg: RunConfig, runs: dict[tuple[str, Languages], pa.Table]
) -> dict[str, str]:
    """pid -> text of every ranked passage (what R@kt reads), read from the collection once,
    part by part, keeping only the ranked ones (never the whole collection's texts at once)."""
    ranked = pa.concat_tables(list(runs.values()))["pid"].unique()
    collection = PartitionedTable(RunPaths(cfg.root).collection)
    texts: dict[str, str] = {}
    for part in sorted(collection.manifest()["parts"]):
        table = collection.read_part(part, columns=["pid", "text"])
        table = table.filter(pc.is_in(table["pid"], value_set=ranked))
        texts.update(zip(table["pid"].to_pylist(), table["text"].to_pylist(), strict=True))
    return texts
