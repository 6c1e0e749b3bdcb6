"""One line naming the machine a figure was measured on: CPU model, count and the flags the
encoder's engine choice rests on (`models/engine_choice.py`), and GPU if any."""

from __future__ import annotations

import os
import platform
from functools import cache

from xqg_ray.models.engine_choice import choice_facts


@cache
def hardware_label() -> str:
    facts = choice_facts()
    cpu = facts["cpu"] or platform.processor() or platform.machine()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flags = " ".join(facts["flags"]) or "none of avx2/avx512/amx reported"
    label = f"{cpus} CPUs ({cpu}; flags {flags})"
    import torch

    if torch.cuda.is_available():
        label += f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return label
