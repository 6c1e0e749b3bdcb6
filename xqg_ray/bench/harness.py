"""What every benchmark script shares: machine facts, a text table, the JSON result file, flags.

Like the shared `benchmark.py` of Ray's release tests: each script measures its own thing, and
this module makes their outputs comparable (same machine block, same file handling).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

VERSIONED_PACKAGES = ("xqg-ray", "ray", "torch", "transformers", "faiss-cpu", "pyarrow", "numpy")


def package_versions(names: Sequence[str] = VERSIONED_PACKAGES) -> dict[str, str | None]:
    """Installed versions by distribution name (None when a package is missing)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_label() -> str:
    """One line naming the machine a figure was measured on: CPU count and model, the flags the
    encoder's engine choice rests on (`models/engine_choice.py`), and GPUs if any."""
    from xqg_ray.models.engine_choice import choice_facts

    facts = choice_facts()
    cpu = facts["cpu"] or platform.processor() or platform.machine()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flags = " ".join(facts["flags"]) or "none of avx2/avx512/amx reported"
    label = f"{cpus} CPUs ({cpu}; flags {flags})"
    import torch

    if torch.cuda.is_available():
        label += f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return label


def machine_info() -> dict[str, Any]:
    """The facts a reader needs to compare two result files: the machine, load, threads,
    versions. The one machine description of every benchmark and probe."""
    import torch

    return {
        "label": machine_label(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "versions": package_versions(),
    }


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain, right-aligned text table (first column left-aligned); floats to 2 decimals."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        first, *rest = values
        return "  ".join(
            [first.ljust(widths[0]), *(v.rjust(w) for v, w in zip(rest, widths[1:], strict=True))]
        )

    return "\n".join(
        [line([str(h) for h in headers]), line(["-" * w for w in widths])] + [line(r) for r in text]
    )


def write_results(path: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Write the results as indented JSON (parent folders created); returns the absolute path."""
    out = Path(path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return out


def parse_ints(text: str) -> list[int]:
    """A comma-separated command-line list of integers: `1,2,4` -> [1, 2, 4]."""
    return [int(part) for part in text.split(",") if part.strip()]
