"""The package's import graph: no cycles between mzsr's modules, function-level imports included, and
the product never imports the lab (benchmarks) or the workflow engine (snakemake)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mzsr"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement anywhere in the file names: `from a.b import c` names a.b.c when
    that is a module, else a.b; relative imports are resolved against the file's package."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return found


def graph() -> dict[str, set[str]]:
    """mzsr module -> the mzsr modules it imports (itself left out)."""
    return {name: {m for m in imported_modules(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
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
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def test_the_graph_sees_function_level_and_relative_imports():
    """The parser itself: a cycle made only by an import inside a function is found."""
    edges = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert cycles(edges) == [["a", "b"]]
    g = graph()
    assert "mzsr.estimation.kernel_net" in g["mzsr.estimation.estimate"]  # imported inside a function there
    assert "mzsr.cli.commands" in g["mzsr.cli"]


def test_mzsr_has_no_import_cycle():
    found = cycles(graph())
    assert found == [], f"import cycles between mzsr's modules: {found}"


def test_mzsr_imports_neither_benchmarks_nor_snakemake():
    bad = {
        name: sorted(m for m in imported_modules(path) if m.split(".")[0] in ("benchmarks", "snakemake"))
        for name, path in MODULES.items()
    }
    assert {k: v for k, v in bad.items() if v} == {}
