"""One wall clock for the benchmarks: on a GPU it waits for queued work before reading the time.

CUDA runs asynchronously, so a clock read without a synchronisation measures the launch, not the
work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clocked(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds `fn` takes on `device` (queued GPU work included), and its result."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result
