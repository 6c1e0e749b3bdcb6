"""The one way this project starts or joins Ray: CLI verbs, Serve, benchmarks and tests.

Joining a cluster must be asked for (`address`, or RAY_ADDRESS as under `ray job submit`);
otherwise a fresh local instance starts even when a `ray start` cluster runs on the machine. No
dashboard, and the output policy of `xqg_ray.console`: workers' output streams to the terminal
only with `--verbose`, into the log file when one is configured, and stays in Ray's session
folder otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from xqg_ray import console


def start_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> bool:
    """Join `address` or RAY_ADDRESS, else start a local Ray with `num_cpus` (None: all).

    Returns whether this call connected, so the caller knows to `ray.shutdown()` what it started;
    an already connected Ray is kept. `env` holds defaults for variables that Ray's processes
    read when they start (set before `ray.init`, never overriding the caller's environment);
    `options` go to `ray.init` (e.g. a dashboard for a test that needs the state API)."""
    import ray

    if console.log_file() is not None:
        import ray.data  # noqa: F401  (installs its console handler, which route_logs moves)
    if ray.is_initialized():
        console.route_logs()  # Serve may have been imported since
        return False
    for key, value in (env or {}).items():
        os.environ.setdefault(key, value)
    joining = address or os.environ.get("RAY_ADDRESS")
    console.route_logs()  # before ray.init: its banner goes through the `ray` logger
    to_file = console.log_file() is not None
    settings: dict[str, Any] = {
        "address": address if joining else "local",
        "num_cpus": None if joining else num_cpus,
        "include_dashboard": False,
        "log_to_driver": console.logs_to_terminal() or to_file,
        **options,
    }
    ray.init(**settings)
    if to_file and settings["log_to_driver"]:
        _workers_output_to_file()
    console.route_logs()
    return True


def _workers_output_to_file() -> None:
    """Ray's driver prints its workers' stdout/stderr through one dispatcher handler; swap it
    for one that writes them into the log file."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.remove_handler("xqg_ray_log_file")  # left by an earlier Ray in this process
    dispatcher.add_handler("xqg_ray_log_file", console.write_worker_lines)
