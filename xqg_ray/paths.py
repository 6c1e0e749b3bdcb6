"""The run-root layout in one place (docs/architecture.md), so no stage spells a path by hand."""

from __future__ import annotations

from dataclasses import dataclass

from xqg_ray.storage import join


def generated_vectors(generator: str) -> str:
    """Under `embeddings/<encoder>/`: each generated query's vector (multivector, re-mixing)."""
    return f"generated-{generator}"


def generated_sums(generator: str) -> str:
    """Under `embeddings/<encoder>/`: per passage and language, its generated queries' sum."""
    return f"generated-{generator}-sums"


@dataclass(frozen=True)
class RunPaths:
    root: str

    def corpus(self, table: str) -> str:
        """`passages`, `queries` or `qrels` as ingested."""
        return join(self.root, "corpus", table)

    @property
    def collection(self) -> str:
        """The passages this run indexes, with global int64 ids, split into resumable parts."""
        return join(self.root, "collection", "passages")

    @property
    def queryset(self) -> str:
        """The evaluation queries, split into parts."""
        return join(self.root, "collection", "queries")

    def generated(self, generator: str) -> str:
        return join(self.root, "generated", generator)

    def embeddings(self, encoder: str, what: str) -> str:
        """`passages`, `queries`, `generated-<generator>` or a strategy's index entries."""
        return join(self.root, "embeddings", encoder, what)

    def index(self, encoder: str, strategy: str) -> str:
        return join(self.root, "index", encoder, strategy)

    def results(self, experiment: str) -> str:
        return join(self.root, "results", experiment)

    def stats(self, stage: str) -> str:
        return join(self.root, "stats", f"{stage}.json")

    @property
    def logs(self) -> str:
        """Ray's and Serve's logs of the CLI's runs on a local root, one file per run."""
        return join(self.root, "logs")
