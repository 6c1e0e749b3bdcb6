"""CTranslate2 plumbing shared by the generator and encoder engines: a conversion cache, compute
types, and the actor's thread share.

A Hugging Face checkpoint (hub name, local directory or `s3://` directory, resolved by
`loading.resolve_model_path`) is converted once into `$XQG_RAY_CACHE/ct2` (or
`~/.cache/xqg-ray/ct2`), in a folder keyed by a hash of the checkpoint and the compute type.
A conversion is written to a temporary folder and renamed into place, so actors that start
together may both convert, but readers only ever see a whole model.

The checkpoint hash is the SHA-256 of every top-level file of a local directory (names, sizes
and contents); for a hub name it is the hub commit that `from_pretrained` resolved.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from xqg_ray.errors import ConfigError, ModelError
from xqg_ray.models.loading import CACHE_ENV, from_pretrained, load_tokenizer
from xqg_ray.storage import sha256_of

CONVERSION_VERSION = 1  # bump when the conversion recipe changes, so cached models are rebuilt
COMPUTE_TYPES = (
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)


def available() -> bool:
    """Whether the `ctranslate2` package imports here."""
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        return False
    return True


def ct2_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "xqg-ray")
    return Path(root) / "ct2"


def cpu_threads() -> int:
    """The CPU share of this process: torch's thread count (the stage runner sets it to the
    actor's `threads`), never more than the CPUs this process may run on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(torch.get_num_threads(), usable or 1))


def resolve_compute_type(compute_type: str, device: torch.device, *, seq2seq: bool = True) -> str:
    """`auto` -> int8 on the CPU; bfloat16 on GPUs with native bf16 (compute capability 8.0+);
    on older GPUs float32 for T5-family models (their activations overflow in fp16) and
    int8_float16 for encoders. An explicit type must be one CTranslate2 supports on the device."""
    import ctranslate2

    if compute_type == "auto":
        if device.type != "cuda":
            return "int8"
        if torch.cuda.get_device_capability(device) >= (8, 0):
            return "bfloat16"
        return "float32" if seq2seq else "int8_float16"
    if compute_type not in COMPUTE_TYPES:
        raise ConfigError(
            f"compute_type {compute_type!r} is not valid: use auto or one of "
            + ", ".join(COMPUTE_TYPES)
        )
    supported = ctranslate2.get_supported_compute_types("cuda" if device.type == "cuda" else "cpu")
    if compute_type not in supported:
        raise ConfigError(
            f"compute_type {compute_type!r} is not supported on {device.type} here; supported: "
            + ", ".join(sorted(supported))
        )
    return compute_type


def device_args(device: torch.device) -> dict[str, Any]:
    """`device`, `device_index` and thread counts for a CTranslate2 model on `device`."""
    if device.type == "cuda":
        return {"device": "cuda", "device_index": device.index or 0}
    return {"device": "cpu", "intra_threads": cpu_threads()}


@lru_cache(maxsize=32)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of(path)


def checkpoint_hash(path: str, config: Any) -> str:
    """A local directory: SHA-256 over its top-level files (name, size, content). A hub name:
    the commit `from_pretrained` resolved (or the name, when the cache does not record one)."""
    if os.path.isdir(path):
        digest = hashlib.sha256()
        for entry in sorted(Path(path).iterdir()):
            if not entry.is_file() or entry.name.startswith("."):
                continue
            stat = entry.stat()
            digest.update(f"{entry.name}\0{stat.st_size}\0".encode())
            digest.update(_file_digest(str(entry), stat.st_size, stat.st_mtime_ns).encode())
        return digest.hexdigest()
    commit = getattr(config, "_commit_hash", None)
    return hashlib.sha256(f"hub:{path}@{commit or 'unknown'}".encode()).hexdigest()


def _converter(path: str) -> Any:
    """A TransformersConverter that loads through this project's `from_pretrained` (clear
    errors)."""
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            loaded = from_pretrained(model_class.from_pretrained, model_name_or_path, **kwargs)
            if not hasattr(loaded.config, "position_embedding_type"):
                # transformers 5 dropped the field (BERT-family positions are always absolute);
                # the BERT and XLM-R converters still check it
                loaded.config.position_embedding_type = "absolute"
            return loaded

        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return load_tokenizer(model_name_or_path)

    return Converter(path)


def convert(path: str, out_dir: str | os.PathLike, quantization: str) -> str:
    """Convert the checkpoint at `path` into `out_dir` with weights stored as `quantization`."""
    try:
        return _converter(path).convert(str(out_dir), quantization=quantization, force=True)
    except (ValueError, NotImplementedError, AssertionError, KeyError) as exc:
        raise ModelError(f"{path}: CTranslate2 cannot convert this checkpoint: {exc}") from exc


def ensure_converted(
    path: str, config: Any, compute_type: str, shown_as: str | None = None, kind: str = "model"
) -> str:
    """The cached CTranslate2 model of the checkpoint at `path` for `compute_type`, converted
    first if missing. `kind` separates conversions of one checkpoint for different uses."""
    import ctranslate2

    return cached_build(
        ct2_cache_dir(),
        path,
        config,
        {
            "compute_type": compute_type,
            "kind": kind,
            "ctranslate2": ctranslate2.__version__.split(".")[0],
            "recipe": CONVERSION_VERSION,
        },
        lambda out: convert(path, out, compute_type),
        name=f"{Path((shown_as or path).rstrip('/')).name or 'model'}-{kind}-{compute_type}",
        complete="model.bin",
    )


def cached_build(
    root: Path,
    path: str,
    config: Any,
    settings: dict[str, Any],
    build: Callable[[Path], Any],
    name: str,
    complete: str,
) -> str:
    """`root/<name>-<key>`, built by `build(folder)` unless a complete build (one that has the
    file `complete`) is there; key = hash of the checkpoint and `settings`. Built in a staging
    folder and renamed into place, so concurrent builders are safe and readers never see half a
    build."""
    key_source = json.dumps(
        {"checkpoint": checkpoint_hash(path, config), **settings}, sort_keys=True
    )
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    target = root / f"{name}-{key}"
    if (target / complete).is_file():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        built = staging / "model"
        build(built)
        (built / "xqg_ray.json").write_text(key_source + "\n", encoding="utf-8")
        built.chmod(0o755)
        try:
            os.rename(built, target)
        except OSError:
            if not (target / complete).is_file():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
