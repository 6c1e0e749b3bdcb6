"""Run the search application on this machine's (or RAY_ADDRESS's) Ray: `xqg-ray serve`, the
service checks and evaluation, benchmarks and tests.

`app.py` builds the application; this module starts Ray if needed, deploys it, waits until it is
RUNNING and stops it again, so the application graph stays free of process management.
"""

from __future__ import annotations

import signal
import socket
import threading
import time

import ray
from ray import serve
from ray.serve.api import _run as serve_run
from ray.serve.schema import ApplicationStatus

from xqg_ray.errors import ConfigError
from xqg_ray.index.shards import find_index, load_manifest
from xqg_ray.ray_start import start_ray
from xqg_ray.serve.app import build_app, plan
from xqg_ray.serve.config import ServeConfig
from xqg_ray.serve.layout import check_fits

# Serve settings for a Ray this module starts itself (measured: docs/reliability.md section 4)
SERVE_ENV: dict[str, str] = {}


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` right now, for a service started by a test, benchmark or check."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def service_url(cfg: ServeConfig) -> str:
    """The base URL a local client uses (a wildcard bind address is reached via loopback)."""
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def _check_free(cfg: ServeConfig) -> None:
    """What the application reserves must be free now (other work on the cluster holds the rest);
    a redeployment of a running application is left to Serve, which replaces it in place."""
    if cfg.app_name in serve.status().applications:
        return
    layout = plan(cfg, check=False)
    free = ray.available_resources()
    try:
        check_fits(layout, free)
    except ConfigError as exc:
        raise ConfigError(
            f"{exc} (free now; the rest of the cluster is held by other applications or tasks)"
        ) from None


def _wait_running(name: str, timeout_s: float) -> None:
    """Until the application is RUNNING; a failed or late start raises, naming what is not up."""
    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(name)
        if app is not None and app.status == ApplicationStatus.RUNNING:
            return
        if app is not None and app.status == ApplicationStatus.DEPLOY_FAILED:
            raise ConfigError(f"the search service failed to start: {app.message}")
        if time.monotonic() > deadline:
            waiting = []
            if app is not None:
                waiting = [
                    f"{deployment} ({info.status}{': ' + info.message if info.message else ''})"
                    for deployment, info in app.deployments.items()
                    if info.status != "HEALTHY"
                ]
            raise ConfigError(
                f"the search service did not come up within startup_timeout_s={timeout_s:g} s; "
                f"not ready: {', '.join(waiting) or 'the application'}. Free resources on the "
                "Ray cluster (`ray status`), lower the replicas' num_cpus, or raise "
                "startup_timeout_s"
            )
        time.sleep(0.2)


def _stop(name: str, started_ray: bool) -> None:
    """Stop fast: our own local Ray goes down whole; on a shared cluster only our application."""
    if started_ray:
        ray.shutdown()
    elif ray.is_initialized():
        serve.delete(name, _blocking=False)


def run_server(cfg: ServeConfig, blocking: bool = True) -> str:
    """Deploy the application and return its URL; `blocking` waits until Ctrl-C, then stops it.

    Uses the Ray cluster at `RAY_ADDRESS` if set (or already connected), else starts a local one
    with Serve's throughput settings (`SERVE_ENV`). Before deploying, what the application
    reserves is checked against the cluster (an error names the setting to change); it must be
    RUNNING within `cfg.startup_timeout_s`. HTTP binds to `cfg.host` (127.0.0.1 by default).
    Ctrl-C stops it within a few seconds, also during start-up.
    """
    load_manifest(find_index(cfg.index))  # a wrong index fails before Ray starts
    started_ray = False
    try:
        started_ray = start_ray(env=SERVE_ENV)  # read by Serve's processes when they start
        if cfg.check_resources is not False:
            plan(cfg)  # the whole cluster first: "lower X" beats "wait for others"
        app = build_app(cfg)
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        if cfg.check_resources is not False:
            _check_free(cfg)
        serve_run(app, name=cfg.app_name, route_prefix=cfg.route_prefix, _blocking=False)
        _wait_running(cfg.app_name, cfg.startup_timeout_s)
    except BaseException:
        _stop(cfg.app_name, started_ray)
        raise
    url = service_url(cfg)
    if blocking:
        if threading.current_thread() is threading.main_thread():
            # as uvicorn does: Ctrl-C stops the service even when the parent shell started it
            # with SIGINT ignored (a background job of a script), which Python would inherit
            signal.signal(signal.SIGINT, signal.default_int_handler)
        print(f"xqg-ray search service at {url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping the search service", flush=True)
        finally:
            _stop(cfg.app_name, started_ray)
    return url
