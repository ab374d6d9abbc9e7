"""The lower-layer modules of the gen run kind import no feature package (brief: servecmp/tasks and
servecmp/metrics import nothing from mcq, mtbench, shadow, html, _cli or gen), checked on their
source: every import statement, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FEATURES = ("mcq", "mtbench", "shadow", "html", "_cli", "gen")
LOWER = ["servecmp/tasks/extract.py", "servecmp/tasks/code_exec.py", "servecmp/tasks/humaneval.py",
         "servecmp/metrics/gen.py"]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("rel", LOWER)
def test_lower_layer_imports_no_feature_package(rel: str) -> None:
    bad = sorted(m for m in imported_modules(REPO / rel)
                 if m.startswith("servecmp.") and m.split(".")[1] in FEATURES)
    assert bad == [], f"{rel} imports feature packages: {bad}"


def test_the_check_sees_imports() -> None:
    # The check itself must be able to fail: metrics/gen.py's own imports are found.
    assert {"servecmp.metrics.stats", "servecmp.metrics.mcq"} <= imported_modules(REPO / "servecmp/metrics/gen.py")
