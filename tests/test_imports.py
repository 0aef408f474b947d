"""The package's import graph: no cycle (function-local and TYPE_CHECKING imports count), and the layering that
docs/design.md draws (resolution below the model, the model below persistence, persistence below attach)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import relaykit

ROOT = Path(relaykit.__file__).parent
ADAPTERS = ROOT.parent / "adapters"


def _modules() -> dict[str, Path]:
    """Every module of relaykit and relaykit.adapters by dotted name (packages by their own name)."""
    found: dict[str, Path] = {}
    for base, package in ((ROOT, "relaykit"), (ADAPTERS, "relaykit.adapters")):
        for path in base.rglob("*.py"):
            if package == "relaykit" and ADAPTERS in path.parents:
                continue
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The relaykit modules ``path`` imports anywhere in its body (top level, functions, TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in modules else base)
    return {m for m in out if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


def test_contract11_no_import_cycle_counting_function_local_imports() -> None:
    graph = _graph()
    cycles = [(a, b) for a, deps in graph.items() for b in deps if a not in ("relaykit",) and _reaches(graph, b, a)]
    assert not cycles, f"import cycles through these edges: {sorted(cycles)}"


def test_contract11_layering_model_below_persistence_below_attach() -> None:
    graph = _graph()
    assert not _reaches(graph, "relaykit.model", "relaykit.io"), "model.py must not import persistence"
    assert not _reaches(graph, "relaykit.io", "relaykit.attach"), "persistence must not import attach"
    assert _reaches(graph, "relaykit.io", "relaykit.adapters"), "persistence builds adapters through the registry"
    assert not _reaches(graph, "relaykit.resolve", "relaykit.model") and _reaches(
        graph, "relaykit.model", "relaykit.resolve"
    ), "module and width resolution sits below model.py"


def test_core_does_not_import_transformers() -> None:
    code = (
        "import sys, relaykit, relaykit.adapters, relaykit.policies, relaykit.io, relaykit.testing, "
        "relaykit.integrations.transformers; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
