"""One line naming the machine a figure was measured on: CPU model, count and the flags the
encoder's engine choice rests on (`models/engine_choice.py`), and GPU if any."""

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
    from xqg_ray.models.engine_choice import choice_facts

    flags = " ".join(choice_facts()["flags"]) or "none of avx2/avx512/amx reported"
    label = f"{cpus} CPUs ({cpu}; flags {flags})"
    import torch

    if torch.cuda.is_available():
        label += f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return label
