"""docs/architecture.md's module table: every module of the package and of jobs/, each with the
first paragraph of its own docstring. Generated from the code, so it cannot list a module that
is gone or miss one that was added; `python tests/test_architecture.py` rewrites the table."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
START = "<!-- generated: python tests/test_architecture.py -->\n"
END = "\n<!-- end generated -->"


def module_table() -> str:
    """One row per module: its path and its docstring's first paragraph, on one line."""
    rows = ["| module | what it is (its docstring's first paragraph) |", "|---|---|"]
    for path in sorted(REPO.glob("xqg_ray/**/*.py")) + sorted(REPO.glob("jobs/*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        first = " ".join(doc.strip().split("\n\n", 1)[0].split())
        rows.append(f"| `{path.relative_to(REPO)}` | {first.replace('|', '/')} |")
    return "\n".join(rows)


def documented_table() -> str:
    text = DOC.read_text(encoding="utf-8")
    return text.split(START, 1)[1].split(END, 1)[0]


def test_every_module_has_a_docstring_and_the_table_matches_the_code():
    table = module_table()
    assert all(not row.endswith("|  |") for row in table.splitlines()), "a module has no docstring"
    assert documented_table() == table, "stale: run `python tests/test_architecture.py`"


def test_the_table_names_only_files_that_exist():
    for row in documented_table().splitlines()[2:]:
        path = row.split("`")[1]
        assert (REPO / path).is_file(), path


if __name__ == "__main__":
    text = DOC.read_text(encoding="utf-8")
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    DOC.write_text(before + START + module_table() + END + after, encoding="utf-8")
    sys.exit(0)
