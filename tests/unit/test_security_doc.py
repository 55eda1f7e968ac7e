"""docs/security.md names real tests: every `tests/...py::name` it cites exists.

A row whose test was renamed or deleted would claim a defense nobody checks any more. A bare
`::name` refers to the file named last before it in the same cell.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "security.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?::(\w+)`|`(tests/[\w/]+\.py)`")


def _rows() -> list[list[str]]:
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def test_every_row_names_at_least_one_test() -> None:
    rows = [r for r in _rows() if r[0] not in ("threat", "property")]
    assert rows, "no rows found"
    missing = [r[0][:60] for r in rows if "tests/" not in " ".join(r)]
    assert missing == [], f"rows without a test: {missing}"


def test_every_cited_test_exists() -> None:
    cited: list[tuple[str, str]] = []
    for row in _rows():
        current = None
        for match in REFERENCE.finditer(" ".join(row)):
            path, name, bare_path = match.groups()
            if bare_path:
                current = bare_path
                continue
            current = path or current
            assert current is not None, f"`::{name}` with no file before it"
            cited.append((current, name))
    assert cited
    absent = [
        f"{path}::{name}"
        for path, name in cited
        if not (REPO / path).exists() or name not in _tests_in(REPO / path)
    ]
    assert absent == [], f"docs/security.md cites tests that do not exist: {absent}"
