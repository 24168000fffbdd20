"""Imports run one way: no cycle in the package, and the light commands import only what they use."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_python

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


# What a command's process has imported when it ends, read from sys.modules at exit.
_PROBE = """
import atexit, json, os, sys
def report():
    with open(os.environ["PROBE_OUT"], "w") as f:
        json.dump(sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "onnx", "lit_nanogpt")), f)
atexit.register(report)
sys.argv = ["lit-nanogpt", *sys.argv[1:]]
from lit_nanogpt.__main__ import main
raise SystemExit(main())
"""


@pytest.fixture(scope="module")
def baby(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.helpers import export_baby

    return export_baby(tmp_path_factory.mktemp("light"), int8=False)


def _imported_by(tmp_path: Path, *args: str) -> set[str]:
    out = tmp_path / "modules.json"
    done = run_python("-c", _PROBE, *args, cwd=tmp_path, env={"PROBE_OUT": str(out)})
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(out.read_text()))


def test_light_commands_import_neither_lightning_nor_onnx(baby: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, export = baby
    tops = lambda modules: {m.split(".")[0] for m in modules if m.split(".")[0] != "lit_nanogpt"}  # noqa: E731
    onnx_run = _imported_by(tmp_path, "generate", f"--onnx={export}", "--max_new_tokens=3")
    assert "lit_nanogpt.export.onnxrt" in onnx_run  # the probe sees the package's own modules
    assert tops(onnx_run) == set(), "generate --onnx imports neither lightning nor onnx"
    ckpt_run = _imported_by(tmp_path, "generate", f"--checkpoint={ckpt}", "--max_new_tokens=3")
    assert "lit_nanogpt.generate" in ckpt_run
    assert "lightning" not in tops(ckpt_run)
    exported = _imported_by(tmp_path, "export", f"--checkpoint={ckpt}", f"--out={tmp_path / 'again'}", "--int8=false")
    assert "onnx" in tops(exported)  # the export step itself needs onnx: the probe would see lightning too
    assert "lightning" not in tops(exported)
    assert "lightning" not in tops(_imported_by(tmp_path, "--help"))
