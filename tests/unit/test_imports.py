"""Imports run one way: no cycle in the package (tests/e2e/test_light_commands.py: what each command imports)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

# Where each top-level package of the project lives (callbacks/ installs as lit_nanogpt.callbacks).
PACKAGES = {"lit_nanogpt": ROOT / "lit_nanogpt", "lit_nanogpt.callbacks": ROOT / "callbacks"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.Module, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules ``module`` imports anywhere (functions included), leaving out ``if TYPE_CHECKING:``."""
    base = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()

    def resolve(name: str) -> None:
        while name and name not in known:  # `from a.b import c`: the module a.b.c, else a.b
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base.split(".")[: len(base.split(".")) - node.level + 1]
                stem = ".".join(parent + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            for alias in node.names:
                resolve(f"{stem}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: _imported(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py", known)
        for name, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), plus self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return groups


def test_the_walker_sees_function_level_imports_and_skips_type_checking() -> None:
    """The check can fail: a planted cycle through a function-level import is found, a TYPE_CHECKING one is not."""
    known = {"pkg", "pkg.a", "pkg.b"}
    a = ast.parse("def f():\n    from pkg.b import g\n")
    b = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\nfrom . import a\n")
    graph = {"pkg.a": _imported(a, "pkg.a", False, known), "pkg.b": _imported(b, "pkg.b", False, known)}
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
    only_typing = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    assert _imported(only_typing, "pkg.b", False, known) == set()


def test_no_import_cycle_in_the_package() -> None:
    graph = import_graph()
    assert "lit_nanogpt.commands" in graph and "lit_nanogpt.callbacks.export" in graph
    assert graph["lit_nanogpt.commands"] >= {"lit_nanogpt.cli", "lit_nanogpt.generate"}  # the walker sees them
    assert cycles(graph) == []


def test_nothing_imports_the_command_table() -> None:
    """``commands`` is the top of the house: only ``__main__`` calls into it."""
    importers = {name for name, deps in import_graph().items() if "lit_nanogpt.commands" in deps}
    assert importers == {"lit_nanogpt.__main__"}


def test_the_training_plugin_knows_nothing_of_the_export() -> None:
    graph = import_graph()
    npu = {name for name in graph if name.startswith("lit_nanogpt.npu")}
    assert not {dep for name in npu for dep in graph[name] if dep.startswith("lit_nanogpt.export")}
    export = {name for name in graph if name.startswith("lit_nanogpt.export")}
    assert not {dep for name in export for dep in graph[name] if dep.startswith("lit_nanogpt.npu")}
