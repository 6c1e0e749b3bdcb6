"""Device and dtype choice shared by every model wrapper: one rule, so CPU and GPU runs agree."""

from __future__ import annotations

import torch

from xqg_ray.errors import ConfigError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` -> the first visible CUDA GPU, else the CPU; an unusable name fails early."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"device {device!r} is not valid: use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but no CUDA GPU is visible to this process")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` -> bf16 on GPUs with native bf16 (compute capability 8.0+), fp16 on older GPUs,
    fp32 on the CPU (half precision there is slower, not faster)."""
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ConfigError(f"dtype {dtype!r} is not valid: use auto, {', '.join(_DTYPES)}")
        return _DTYPES[dtype]
    if device.type != "cuda":
        return torch.float32
    if torch.cuda.get_device_capability(device) >= (8, 0):
        return torch.bfloat16
    return torch.float16
