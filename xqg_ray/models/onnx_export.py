"""ONNX Runtime engine for encoder-only checkpoints: export once (cached), run on the CPU.

The checkpoint is exported with `torch.onnx.export(dynamo=True)` (inputs `input_ids`,
`attention_mask`; output `last_hidden_state`; batch and length dynamic) into
`$XQG_RAY_CACHE/onnx` (or `~/.cache/xqg-ray/onnx`), keyed like the CTranslate2 cache by a hash
of the checkpoint. The TorchScript exporter (`dynamo=False`) is not used: with transformers 5 it
bakes parts of the traced inputs into BERT's graph, which then returns wrong vectors.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xqg_ray.errors import ModelError
from xqg_ray.models.ct2 import cached_build, cpu_threads
from xqg_ray.models.loading import CACHE_ENV

EXPORT_VERSION = 1
MODEL_FILE = "model.onnx"


def available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "xqg-ray")
    return Path(root) / "onnx"


class _LastHiddenState(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_encoder(model: torch.nn.Module, out_dir: str | os.PathLike, max_length: int) -> str:
    """Write `model` (an fp32 AutoModel encoder) as `out_dir/model.onnx`; weights in one file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    batch = torch.export.Dim("batch")
    length = torch.export.Dim("length", max=max_length)
    shapes = ({0: batch, 1: length}, {0: batch, 1: length})
    # the exporter logs a line per torchvision op it cannot register: not ours to show
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _LastHiddenState(model),
                (ids, mask),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamic_shapes=shapes,
                dynamo=True,
                verbose=False,
            )
            program.save(str(out / MODEL_FILE), external_data=False)
    except Exception as exc:  # the exporter raises many types; all mean "cannot export"
        raise ModelError(f"cannot export the encoder to ONNX: {exc}") from exc
    return str(out / MODEL_FILE)


def ensure_exported(path: str, config: Any, model_loader, shown_as: str | None = None) -> str:
    """The cached ONNX export of the checkpoint at `path` (exported first if missing);
    `model_loader()` returns the fp32 torch model and is called only on a cache miss."""
    max_length = int(getattr(config, "max_position_embeddings", 512) or 512)
    folder = cached_build(
        onnx_cache_dir(),
        path,
        config,
        {"kind": "encoder", "torch": torch.__version__.split("+")[0], "recipe": EXPORT_VERSION},
        lambda out: export_encoder(model_loader(), out, max_length),
        name=f"{Path((shown_as or path).rstrip('/')).name or 'model'}-encoder-float32",
        complete=MODEL_FILE,
    )
    return str(Path(folder) / MODEL_FILE)


def session(model_file: str, device: torch.device) -> Any:
    """An ONNX Runtime session on the CPU with this actor's thread share."""
    import onnxruntime as ort

    if device.type != "cpu":
        raise ModelError(
            "encoder.engine onnxruntime runs on the CPU only here; use torch or ctranslate2 on GPUs"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])


def run(sess: Any, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return sess.run(
        ["last_hidden_state"],
        {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)},
    )[0]
