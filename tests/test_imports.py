"""The package has no import cycle: every ``import`` statement counts, ``TYPE_CHECKING`` ones and
those inside functions included (a cycle hidden behind a late import is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "aoai_realtime"
ROOT = Path(__file__).resolve().parent.parent / "src" / PACKAGE


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join([package, *parts])] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` (at ``path``) imports, wherever the statement is."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:  # ``from . import ids``: the module ids
                    out.add(sub)
                elif target in modules:  # ``from .x import y``: the module x
                    out.add(target)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cycle_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete loop through a component, for the failure message: a -> b -> ... -> a."""
    members = set(component)
    start = component[0]
    # breadth-first from start back to start, inside the component
    paths: dict[str, list[str]] = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    return component


def test_the_checker_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycle_path(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_the_checker_reads_relative_and_type_checking_imports(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import A\n")
    (pkg / "sub" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n"
    )
    (pkg / "sub" / "b.py").write_text("def f():\n    from . import a\n    from .. import top\n")
    (pkg / "top.py").write_text("import aoai_realtime.sub.a\n")
    modules = module_names(pkg)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert graph[f"{PACKAGE}.sub"] == {f"{PACKAGE}.sub.a"}
    assert graph[f"{PACKAGE}.sub.a"] == {f"{PACKAGE}.sub.b"}
    assert graph[f"{PACKAGE}.sub.b"] == {f"{PACKAGE}.sub.a", f"{PACKAGE}.top"}
    assert graph[f"{PACKAGE}.top"] == {f"{PACKAGE}.sub.a"}
    assert cycles(graph) == [[f"{PACKAGE}.sub.a", f"{PACKAGE}.sub.b", f"{PACKAGE}.top"]]


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.engine.session" in graph  # the walk found the package
    found = cycles(graph)
    loops = [" -> ".join(cycle_path(graph, c)) for c in found]
    assert not found, "import cycles:\n" + "\n".join(loops)
