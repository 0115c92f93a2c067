"""Imports flow one way (recipe -> data/models -> engine -> run -> report): no module-level import cycle.

The graph is read with `ast` from src/powertrain: module-level `import` and `from ... import` statements
(relative ones resolved; those inside functions, which run late, are left out). `from . import x` counts
as an import of the submodule x when x is one, else of the package. An import of a package that contains
the importing module (`from . import DATASETS` in data/csvdata.py) is no edge: Python imports that package
first anyway, and its __init__ importing its own submodules to register them is how a package is built.
"""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "powertrain"


def modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / PKG).rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _top_level(tree: ast.Module):
    """Statements run at import time: the module body, descending into if/try/with, not into defs."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    stack.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _top_level(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = package.split(".")
                if node.level:
                    base = base[: len(base) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            edges[name] |= {t for t in targets if t in mods and t != name and not name.startswith(t + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, on, stack, comps = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(set(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [_one_cycle(edges, comp) for comp in comps]


def _one_cycle(edges, comp: set[str]) -> list[str]:
    """A shortest path start -> ... -> start inside the component, for the message."""
    start = min(comp)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(edges[path[-1]] & comp):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    return sorted(comp)


def test_cycle_finder_finds_a_planted_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_relative_imports():
    edges = graph()
    assert "powertrain.errors" in edges["powertrain.recipe"]  # from .errors import ...
    assert "powertrain.registry" in edges["powertrain.data"]  # from ..registry import ...
    assert "powertrain.data.mnist1d" in edges["powertrain.data"]  # from . import ..., mnist1d, ...
    assert "powertrain.data" not in edges["powertrain.data.mnist1d"]  # its own package: imported first anyway


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_registry_does_not_reach_back_into_recipe():
    """recipe -> data/models -> registry: registry must not import recipe, not even late inside a function."""
    tree = ast.parse((SRC / PKG / "registry.py").read_text())
    names = {(n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {"recipe", "powertrain.recipe"} & names, names
