"""The package's layers point one way (docs/architecture.md, "Layers"): a module may import its
own layer and the layers below it, never one above; within a layer, imports form no cycle. The
jobs (`jobs/*.py`) sit on top with the CLI, and nothing imports them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "xqg_ray"
JOBS = REPO / "jobs"
LAYERS = [
    {"__init__", "errors", "strict", "storage", "config", "paths", "schema", "languages"}
    | {"console", "ray_start", "latency"},
    {"datasets", "models", "index"},
    {"stages", "serve"},
    {"evaluate"},
    {"testing"},
    {"report", "bench"},
    {"cli", "jobs"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}
# about 980 imports between the package's own modules today: far fewer means the scan broke
MIN_IMPORTS_SEEN = 800


def _unit(module: str) -> str:
    """`xqg_ray.evaluate.tuning` -> `evaluate`; `xqg_ray.cli` -> `cli`; `jobs.x` -> `jobs`."""
    parts = module.split(".")
    if parts[0] == "jobs":
        return "jobs"
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def _imports(path: Path, module: str | None = None) -> list[tuple[str, int]]:
    """The package modules `path` imports (at any depth of the file), with their lines.

    A relative import is resolved against `module` (the file's own dotted name); one that
    cannot be resolved fails, so nothing is skipped silently."""
    found = []
    package = (module or "").rsplit(".", 1)[0] if path.name != "__init__.py" else module or ""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:
                base = package.split(".")
                if not module or node.level > len(base):
                    raise AssertionError(f"{path}:{node.lineno}: relative import not mapped")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, name] if name else base)
            if name == "xqg_ray" or name.startswith("xqg_ray."):
                # `from pkg import x`: x may be a module; `_graph` trims names to modules
                found += [(f"{name}.{alias.name}", node.lineno) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("xqg_ray.")]
    return found


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py")) + sorted(JOBS.glob("*.py"))


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (a package import names its __init__)."""
    modules = {_module_name(p).removesuffix(".__init__") for p in _sources()}
    graph: dict[str, set[str]] = {}
    for path in _sources():
        source = _module_name(path).removesuffix(".__init__")
        targets = set()
        for target, _line in _imports(path, _module_name(path)):
            while target not in modules and "." in target:  # `from pkg.mod import name`
                target = target.rsplit(".", 1)[0]
            if target != source:
                targets.add(target)
        graph[source] = targets
    return graph


def test_every_unit_of_the_package_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    units = {u for u in units if not u.startswith("_") and u not in {"configs"}}
    assert units <= set(LEVEL), f"add {sorted(units - set(LEVEL))} to LAYERS and the document"


def test_no_module_imports_a_higher_layer_and_the_scan_saw_the_imports():
    violations, seen = [], 0
    for path in _sources():
        source = _unit(_module_name(path))
        assert source in LEVEL, f"{path}: no layer"
        for module, line in _imports(path, _module_name(path)):
            seen += 1
            target = _unit(module)
            assert target in LEVEL, f"{path}:{line} imports {module}: no layer"
            if LEVEL[target] > LEVEL[source]:
                violations.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not violations, "\n".join(violations)
    assert seen >= MIN_IMPORTS_SEEN, f"only {seen} imports seen: the scan is broken"


def test_no_import_cycle_between_modules():
    """Within a layer a module may import another one, as long as the imports form no circle
    (function-level imports included: they hide a circle, they do not break it)."""
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_nothing_imports_the_jobs():
    importers = [m for m, targets in _graph().items() if any(t.startswith("jobs") for t in targets)]
    assert importers == [m for m in importers if m.startswith("jobs.")], importers


def test_the_layer_check_catches_an_upward_import_and_a_relative_one(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("from xqg_ray.stages.pipeline import build\nimport xqg_ray.cli\n")
    targets = [_unit(m) for m, _ in _imports(module, "xqg_ray.storage")]
    assert targets == ["stages", "cli"]
    assert all(LEVEL[t] > LEVEL["storage"] for t in targets)
    relative = tmp_path / "rel.py"
    relative.write_text("from ..stages import pipeline\nfrom .search import InProcessIndex\n")
    assert [m for m, _ in _imports(relative, "xqg_ray.index.shards")] == [
        "xqg_ray.stages.pipeline",
        "xqg_ray.index.search.InProcessIndex",
    ]
    with pytest.raises(AssertionError, match="relative import not mapped"):
        _imports(relative, None)
