"""The package's layers point one way (docs/architecture.md, "Layers"): a module may import its
own layer and the layers below it, never one above."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xqg_ray"
LAYERS = [
    {"errors", "strict", "storage", "config", "paths", "schema", "languages"}
    | {"console", "ray_start"},
    {"datasets", "models", "index"},
    {"stages", "serve"},
    {"evaluate"},
    {"testing"},
    {"research", "bench"},
    {"cli"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str:
    """`xqg_ray.evaluate.tuning` -> `evaluate`; `xqg_ray.cli` -> `cli`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "xqg_ray":
                found += [(f"xqg_ray.{alias.name}", node.lineno) for alias in node.names]
            elif node.module.startswith("xqg_ray."):
                found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("xqg_ray.")]
    return found


def test_every_unit_of_the_package_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    units = {u for u in units if not u.startswith("_") and u not in {"configs"}}
    assert units <= set(LEVEL), f"add {sorted(units - set(LEVEL))} to LAYERS and the document"


def test_no_module_imports_a_higher_layer():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        source = _unit(".".join(relative.parts))
        if source not in LEVEL:
            continue
        for module, line in _imports(path):
            target = _unit(module)
            if target in LEVEL and LEVEL[target] > LEVEL[source]:
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not violations, "\n".join(violations)


def test_the_layer_check_catches_an_upward_import(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("from xqg_ray.stages.pipeline import build\nimport xqg_ray.cli\n")
    targets = [_unit(m) for m, _ in _imports(module)]
    assert targets == ["stages", "cli"]
    assert all(LEVEL[t] > LEVEL["storage"] for t in targets)
