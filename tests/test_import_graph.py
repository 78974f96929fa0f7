"""No import circles inside ``meshcore/controlplane`` or ``meshcore/cli``.

The graph is drawn from the code (every ``import``, module level or inside a function, except those under
``if TYPE_CHECKING:``), so a feature that imports the daemon back, or a subcommand module that imports
``cli/main.py``, shows up as a cycle. Run ``python -m tests.test_import_graph`` to print the graph.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import meshcore

ROOT = Path(meshcore.__file__).parent
PACKAGES = ("meshcore.controlplane", "meshcore.cli")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute names of the modules ``tree`` imports (``from . import x`` counts as importing ``pkg.x``)."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(package: str) -> dict[str, set[str]]:
    """``{module: modules of the same package it imports}`` for every module of ``package``."""
    folder = ROOT.parent.joinpath(*package.split("."))
    modules: dict[str, tuple[Path, bool]] = {}
    for path in sorted(folder.glob("*.py")):
        name = package if path.stem == "__init__" else f"{package}.{path.stem}"
        modules[name] = (path, path.stem == "__init__")
    graph = {}
    for name, (path, is_package) in modules.items():
        imported = _imports(ast.parse(path.read_text(), str(path)), name, is_package)
        graph[name] = {m for m in imported if m in modules and m != name and m != package}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    graph = import_graph(package)
    assert len(graph) > 5
    found = cycles(graph)
    assert found == [], "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_features_do_not_import_the_daemon():
    """The daemon wires the features; none of them reaches back for it (they get narrow interfaces)."""
    graph = import_graph("meshcore.controlplane")
    assert sorted(m for m, deps in graph.items() if "meshcore.controlplane.daemon" in deps) == \
        ["meshcore.controlplane.__main__"]


def test_cli_modules_do_not_import_main():
    graph = import_graph("meshcore.cli")
    assert sorted(m for m, deps in graph.items() if "meshcore.cli.main" in deps) == []


if __name__ == "__main__":
    for pkg in sys.argv[1:] or PACKAGES:
        for mod, deps in sorted(import_graph(pkg).items()):
            print(f"{mod} -> {', '.join(sorted(deps)) or '-'}")
        print("cycles:", cycles(import_graph(pkg)) or "none")
