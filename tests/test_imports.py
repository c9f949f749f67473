"""The import graph of bertbatch's own modules has no cycle.

Read from the source with ast, not by importing: every `import` and `from ... import` counts, at module level
and inside functions (a function-level import is how a cycle hides until the function runs), `if TYPE_CHECKING:`
blocks included. The layers this keeps: gates may use score; score never imports export, tune or gates.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bertbatch"


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under root (a package's __init__ is the package itself)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _imported(module: str, path: Path, node: ast.AST, known: set[str]) -> set[str]:
    """The known modules one import statement loads."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    targets = set()
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        # `from pkg import sub` loads pkg.sub when it is a module, else reads a name of pkg
        targets.add(candidate if candidate in known else base)
    return targets & known


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source."""
    names = module_names(root)
    known = set(names)
    graph = {}
    for module, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        deps = set()
        for node in ast.walk(tree):
            deps |= _imported(module, path, node, known)
        graph[module] = deps - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) per strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_one_cycle(graph, group) for group in groups]


def _one_cycle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A readable cycle inside a strongly connected group: walk from its first module back to it."""
    start = min(group)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for dep in sorted(graph[path[-1]] & group):
            if dep == start:
                return path + [start]
            if dep not in seen:
                seen.add(dep)
                paths.append(path + [dep])
    return sorted(group)


def test_bertbatch_modules_import_one_way_without_cycles():
    found = cycles(import_graph(PACKAGE))
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_score_imports_neither_export_nor_tune_nor_gates():
    graph = import_graph(PACKAGE)
    forbidden = {"bertbatch.export", "bertbatch.tune", "bertbatch.gates"}
    assert not graph["bertbatch.score"] & forbidden, graph["bertbatch.score"] & forbidden


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    # the checker itself: a package whose only cycle goes through an import inside a function
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import thing\n    return thing\n")
    (pkg / "c.py").write_text("from . import a\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]
