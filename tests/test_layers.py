"""Layers point one way: lower layers import no feature package, and no module imports itself back.

Every import counts, function-local ones too: a lazy import hides a dependency from start-up time,
not from the design (moving the lower layer to another program would still drag the feature along).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "servecmp"

#: The lower layers: what every feature builds on. Paths relative to servecmp/.
LOWER = ("tasks", "metrics", "endpoints.py", "_http.py", "concurrency.py", "capabilities.py", "runstore.py",
         "errors.py", "config.py", "records.py", "progress.py", "options.py")
#: The feature packages (a lower layer must not import any of them).
FEATURES = ("servecmp.mcq", "servecmp.mtbench", "servecmp.shadow", "servecmp.html", "servecmp._cli", "servecmp.gen")


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Every module name an import in ``path`` may refer to (``from a import b`` gives a and a.b)."""
    me = _module_name(path)
    package = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package[: len(package) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def test_lower_layers_import_no_feature_package() -> None:
    bad = []
    for entry in LOWER:
        base = PKG / entry
        files = sorted(base.rglob("*.py")) if base.is_dir() else [base]
        assert files and all(f.exists() for f in files), f"lower layer {entry} is missing"
        for f in files:
            hits = sorted(n for n in _imports(f) if any(n == p or n.startswith(p + ".") for p in FEATURES))
            if hits:
                bad.append(f"{f.relative_to(ROOT)} imports {hits[0]}")
    assert bad == []


def test_the_layer_check_sees_a_violation() -> None:
    # The walk itself must catch both import forms, relative ones included (or the test above could not fail).
    probe = PKG / "tasks" / "_layer_probe_tmp.py"
    probe.write_text("def f():\n    from ..mcq import run\n    import servecmp.shadow.store\n")
    try:
        hits = {n for n in _imports(probe) if any(n == p or n.startswith(p + ".") for p in FEATURES)}
    finally:
        probe.unlink()
    assert {"servecmp.mcq", "servecmp.mcq.run", "servecmp.shadow.store"} <= hits


def test_no_import_cycle() -> None:
    mods = _modules()
    edges = {m: {t for t in _imports(p) if t in mods and t != m and not m.startswith(t + ".")}
             for m, p in mods.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(u: str, path: list[str]) -> bool:
        state[u] = 1
        path.append(u)
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                cycle.extend(path[path.index(v):] + [v])
                return True
            if v not in state and visit(v, path):
                return True
        path.pop()
        state[u] = 2
        return False

    for m in sorted(mods):
        if m not in state and visit(m, []):
            break
    assert cycle == [], " -> ".join(cycle)
