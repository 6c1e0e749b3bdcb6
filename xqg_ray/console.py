"""What a person sees: progress and results on the terminal, Ray's and Serve's logs in a file.

A run talks through three channels. Progress: one bar per stage on a terminal (Ray Data's own, or
tqdm without Ray), one line per stage elsewhere (pipes, CI, files), so a log stays readable.
Results: the tables, printed by the CLI. Logs: Ray's start-up banners, Ray Data's progress and
status records, Serve's controller and replica records, the workers' stdout/stderr and Python
warnings go to one file once `configure` names it; errors still reach stderr. `verbose` leaves
Ray's own handlers alone, so everything comes back to the terminal.

Without `configure` (tests, benchmarks) Ray's handlers are left as they are and workers' output
stays in Ray's session folder.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

RAY_LOGGERS = ("ray", "ray.data", "ray.serve")
"""Driver-side loggers that write to the console by default (each with `propagate = False`)."""

_ROUTED = "_xqg_ray_routed"  # marks the handlers `route_logs` adds, so it can run again


@dataclass
class Output:
    verbose: bool = False
    log_file: Path | None = None
    stream: IO[str] | None = None
    removed: list[tuple[logging.Logger, logging.Handler]] = field(default_factory=list)


_output = Output()


def configure(log_file: Path | None, verbose: bool = False) -> None:
    """Send Ray's logs to `log_file` (created with its folder), or with `verbose` to the
    terminal; call before Ray starts. A second call undoes the first (tests run several)."""
    global _output
    _restore()
    if verbose or log_file is None:
        _output = Output(verbose=verbose)
        return
    if not interactive():  # Hugging Face's download/load/save bars: one line per stage instead
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    _output = Output(log_file=log_file, stream=log_file.open("a", encoding="utf-8", buffering=1))
    logging.captureWarnings(True)  # `warnings.warn` records go to the `py.warnings` logger
    route_logs()


def _restore() -> None:
    """Give Ray's loggers their own handlers back and close the log file."""
    for name in (*RAY_LOGGERS, "py.warnings"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if getattr(h, _ROUTED, False)]:
            logger.removeHandler(handler)
    for logger, handler in _output.removed:
        logger.addHandler(handler)
    if _output.stream is not None:
        logging.captureWarnings(False)
        logging.getLogger("py.warnings").propagate = True
        _output.stream.close()


def log_file() -> Path | None:
    """Where the logs go; None when they stay on the terminal."""
    return _output.log_file


def logs_to_terminal() -> bool:
    """Whether Ray should stream its workers' output to the terminal (`verbose`)."""
    return _output.verbose


def interactive() -> bool:
    """A terminal gets progress bars; anything else one line per stage."""
    return sys.stdout.isatty()


def route_logs() -> None:
    """Move the console handlers of Ray's loggers (and of Python warnings) into the log file,
    keeping a stderr handler for errors. Safe to call again: Ray Data and Serve install their
    handlers when imported, so it runs whenever Ray is started or joined."""
    if _output.stream is None:
        return
    for name in (*RAY_LOGGERS, "py.warnings"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if _is_console(handler) and not getattr(handler, _ROUTED, False):
                logger.removeHandler(handler)
                _output.removed.append((logger, handler))
        if not any(getattr(handler, _ROUTED, False) for handler in logger.handlers):
            to_file = logging.StreamHandler(_output.stream)
            to_file.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
            errors = _Stderr(logging.ERROR)
            for handler in (to_file, errors):
                setattr(handler, _ROUTED, True)
                logger.addHandler(handler)
        logger.propagate = False  # Ray's are already; warnings would reach the root's stderr


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes (the CLI's test runner swaps it)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.setLevel(level)

    @property
    def stream(self) -> IO[str]:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        """StreamHandler sets it once; the property above always reads the current stderr."""


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(
        handler, logging.FileHandler
    )


def write_worker_lines(batch: dict[str, Any]) -> None:
    """Ray's log monitor hands the driver its workers' stdout/stderr lines; they go to the file,
    prefixed like Ray's console does (`(actor pid=N) line`)."""
    stream = _output.stream
    if stream is None:
        return
    prefix = f"({batch.get('actor_name') or batch.get('task_name') or 'worker'} pid={batch['pid']})"
    stream.writelines(f"{prefix} {line}\n" for line in batch.get("lines", []))


def stage_line(name: str, rows: int, seconds: float, enabled: bool = True) -> None:
    """Off a terminal, one line on stderr when a stage ends (stdout keeps the results); on a
    terminal its progress bar has said it."""
    if enabled and not interactive():
        print(f"{name}: {rows} rows in {seconds:.1f} s", file=sys.stderr, flush=True)


@contextmanager
def stage(
    name: str, steps: int, unit: str, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """A stage that does not run on Ray Data (evaluation, tuning): a tqdm bar of `steps` on a
    terminal, `stage_line` when it ends elsewhere. Yields `advance(rows)`, called per step."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    rows = 0
    with tqdm(total=steps, desc=name, unit=unit, disable=not (enabled and interactive())) as bar:

        def advance(step_rows: int) -> None:
            nonlocal rows
            rows += step_rows
            bar.update(1)

        yield advance
    stage_line(name, rows, time.perf_counter() - start, enabled)
