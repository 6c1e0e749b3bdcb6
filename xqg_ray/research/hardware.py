"""One line naming the machine a figure was measured on: CPU model and count, and GPU if any."""

from __future__ import annotations

import os
import platform
from functools import cache


@cache
def hardware_label() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if "model name" in line]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    label = f"{cpus} CPUs ({cpu})"
    import torch

    if torch.cuda.is_available():
        label += f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return label
