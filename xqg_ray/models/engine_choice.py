"""What `encoder.engine: auto` runs, per input kind, and the CPU facts the choice rests on.

An encoder call is either a batch (passages, generated queries, evaluation queries) or a single
text (a query at serving time), and different engines win each: on the CPU, torch in bf16 on
AMX / AVX512-BF16 matrix units for batches, ONNX Runtime fp32 for one short query, where torch's
per-op overhead dominates. `auto` picks only engines measured accurate (cosine >= 0.999 with
torch fp32 on every XQuAD text): CTranslate2 int8 and dynamic int8 quantization miss that bar and
run only when named. The table below is what `python -m xqg_ray.bench.encoders` measured
(docs/engines.md, docs/benchmarks.md); it is keyed by CPU features because these machines change
CPU between runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

BF16_MATMUL_FLAGS = ("amx_bf16", "avx512_bf16")
BATCH, SINGLE = "batch", "single"


@dataclass(frozen=True)
class EngineSpec:
    """An engine and the dtype it runs in (`auto`: the engine's own default on the device)."""

    engine: str
    dtype: str = "auto"


@cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags as Linux reports them (empty elsewhere: no bf16
    then, the safe side); read once per process."""
    model, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def cpu_flags() -> frozenset[str]:
    return _cpuinfo()[1]


def cpu_has_bf16_matmul() -> bool:
    """bf16 matrix units (AMX) or AVX512-BF16: where torch bf16 is both exact enough and faster."""
    return any(flag in cpu_flags() for flag in BF16_MATMUL_FLAGS)


def auto_engines(device: torch.device, onnxruntime_installed: bool) -> dict[str, EngineSpec]:
    """The engine `auto` gives each input kind on `device`."""
    if device.type == "cuda":
        return {BATCH: EngineSpec("torch"), SINGLE: EngineSpec("torch")}
    batch = EngineSpec("torch", "bfloat16" if cpu_has_bf16_matmul() else "float32")
    single = EngineSpec("onnxruntime", "float32") if onnxruntime_installed else batch
    return {BATCH: batch, SINGLE: single}


def choice_facts() -> dict[str, object]:
    """What the choice was made on, recorded beside it: the CPU and its bf16-relevant flags."""
    flags = cpu_flags()
    shown = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")
    return {"cpu": _cpuinfo()[0], "flags": [flag for flag in shown if flag in flags]}
