"""The import graph of `src/d1` (read with `ast`, imports inside functions included): no cycles between
modules, and no module imports from a higher layer (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# bottom to top; packages on one line share a layer and may import each other (without cycles)
LAYERS = (
    ("d1", "d1.utils", "d1.hub", "d1.cluster", "d1.sandbox"),  # shared helpers; `d1` itself: version and lazy exports only
    ("d1.diffusion",),
    ("d1.models", "d1.tasks", "d1.data"),
    ("d1.sft", "d1.rl", "d1.evaluation"),
    ("d1.viz",),
    ("d1.demo",),
    ("d1.cli", "d1.__main__"),
)


def module_files(src: Path) -> dict[str, Path]:
    """Every module under `src/d1` by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted((src / "d1").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The d1 modules that `name` imports, anywhere in its file; `from pkg import sub` counts as `pkg.sub`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {target for target in found if target in modules and target != name}


def layer_of(name: str) -> int:
    """The index in LAYERS of the longest package listed there that holds `name` (`d1` itself only as itself)."""
    holders = [p for layer in LAYERS for p in layer if name == p or (p != "d1" and name.startswith(p + "."))]
    if not holders:
        raise ValueError(f"{name} is in no layer; add its package to LAYERS here and to docs/ARCHITECTURE.md")
    best = max(holders, key=len)
    return next(index for index, layer in enumerate(LAYERS) if best in layer)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    modules = module_files(src)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
        for name, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(name)
    ]


def test_every_module_has_a_layer() -> None:
    for name in import_graph():
        layer_of(name)
    with pytest.raises(ValueError, match="d1.newpkg.x is in no layer"):
        layer_of("d1.newpkg.x")


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_no_upward_imports() -> None:
    assert upward_imports(import_graph()) == []


def test_the_checks_find_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """A hand-made package: diffusion/a.py imports cli/b.py (upward), which imports diffusion/a.py (a cycle);
    tasks/c.py imports diffusion/a.py inside a function (downward, allowed)."""
    files = {
        "d1/__init__.py": "",
        "d1/diffusion/__init__.py": "",
        "d1/diffusion/a.py": "from d1.cli import b\n",
        "d1/cli/__init__.py": "",
        "d1/cli/b.py": "def f():\n    from ..diffusion.a import x\n",
        "d1/tasks/__init__.py": "",
        "d1/tasks/c.py": "def g():\n    import d1.diffusion.a\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["d1.tasks.c"] == {"d1.diffusion.a"}
    assert graph["d1.cli.b"] == {"d1.diffusion.a"}
    assert cycles(graph) == [["d1.cli.b", "d1.diffusion.a"]]
    assert upward_imports(graph) == ["d1.diffusion.a (layer 1) imports d1.cli.b (layer 6)"]
