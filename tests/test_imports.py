"""Imports flow one way: down the layers of docs/architecture.md, never up, never in a circle.

The graph is read with `ast` from src/powertrain, counting every import: module-level ones, those inside
functions (a deferred import is still a dependency), those under `if TYPE_CHECKING`, and a child's
import of its own package (`from . import X` in data/csvdata.py is an edge to `powertrain.data`).
`from pkg import name` is an edge to the submodule `pkg.name` when that is a module, else to `pkg`.

    python tests/test_imports.py        # prints every upward import and cycle (empty when the house is sound)
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "powertrain"

# Bottom to top. A module may import its own layer and any layer below; the four siblings on one rung
# (shrink, trust, study, infer) may not import each other. The facade sits on top of everything.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "settings"),  # ground
    ("recipe",),
    ("data",),
    ("models",),
    ("measure",),
    ("run",),
    ("integrations",),  # the bill of a loop powertrain does not run (track, Lightning, HF, Keras)
    ("train",),
    ("shrink", "trust", "study", "infer"),
    ("report",),
    ("cli",),
    ("", "__main__", "api"),  # the facade: powertrain/__init__.py, __main__.py, api.py
]
SIBLINGS = set(next(rung for rung in LAYERS if "shrink" in rung))
ROOT_FILES = {"__init__.py", "__main__.py", "api.py", "errors.py", "settings.py"}


def modules(src: Path = SRC) -> dict[str, Path]:
    out = {}
    for path in (src / PKG).rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _targets(node: ast.AST, package: str, mods: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif node.level:
        base = package.split(".")
        base = ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    else:
        base = node.module or ""
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    out = []
    for name in names:  # `import powertrain.data.text` depends on powertrain.data.text, the longest module named
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the modules it imports anywhere in its file."""
    mods = modules(src)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[name] |= {t for t in _targets(node, package, mods) if t != name}
    return edges


def layer_of(module: str) -> tuple[int, str]:
    """(rung, folder) of a module: `powertrain.train.engine` -> (7, "train")."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    for rung, names in enumerate(LAYERS):
        if top in names:
            return rung, top
    raise KeyError(f"{module}: in no layer of LAYERS; add its folder there and to docs/architecture.md")


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a layer, or sideways between the siblings of one rung."""
    bad = []
    for a, targets in sorted(edges.items()):
        ra, fa = layer_of(a)
        for b in sorted(targets):
            rb, fb = layer_of(b)
            if rb > ra or (fa != fb and {fa, fb} <= SIBLINGS):
                bad.append(f"{a} -> {b}")
    return bad


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


# ---------------------------------------------------------------- the house
def test_no_import_cycle_counting_every_import():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_import_goes_up():
    bad = upward(graph())
    assert not bad, "imports that go up (docs/architecture.md: pass the thing in, or move it down):\n" + "\n".join(bad)


def test_package_root_holds_only_the_facade_and_the_ground():
    extra = sorted(p.name for p in (SRC / PKG).iterdir() if p.suffix == ".py" and p.name not in ROOT_FILES)
    assert not extra, f"modules at the package root beyond {sorted(ROOT_FILES)}: {extra}; move them into their folder"


def test_every_folder_has_a_layer():
    for name in modules():
        layer_of(name)


# ---------------------------------------------------------------- the checker checks
def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / PKG / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_planted_upward_import_fails(tmp_path):
    """measure importing train inside a function (deferred) is caught; the same import the other way is not."""
    src = _plant(tmp_path, {"__init__.py": "", "measure/__init__.py": "", "train/__init__.py": "",
                            "measure/meter.py": "def f():\n    from ..train.engine import Trainer\n",
                            "train/engine.py": "from ..measure import meter\n"})
    assert upward(graph(src)) == ["powertrain.measure.meter -> powertrain.train.engine"]


def test_siblings_on_one_rung_may_not_import_each_other(tmp_path):
    src = _plant(tmp_path, {"__init__.py": "", "shrink/__init__.py": "", "infer/__init__.py": "",
                            "infer/predict.py": "from powertrain.shrink import quantize\n"})
    assert upward(graph(src)) == ["powertrain.infer.predict -> powertrain.shrink"]


def test_a_child_importing_its_package_is_a_cycle(tmp_path):
    """The registry-in-__init__ knot: data/__init__ imports csvdata to register it, csvdata imports data."""
    src = _plant(tmp_path, {"__init__.py": "", "data/__init__.py": "from . import csvdata\n",
                            "data/csvdata.py": "from . import DATASETS\n"})
    assert cycles(graph(src)) == [["powertrain.data", "powertrain.data.csvdata", "powertrain.data"]]


def test_cycle_finder_finds_a_planted_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_relative_deferred_and_absolute_imports():
    edges = graph()
    assert "powertrain.errors" in edges["powertrain.recipe.schema"]  # from ..errors import ...
    assert "powertrain.data.registry" in edges["powertrain.data.csvdata"]  # from .registry import ...
    assert "powertrain.data.mnist1d" in edges["powertrain.data"]  # from . import ..., mnist1d, ...
    assert "powertrain.train.lifecycle" in edges["powertrain.cli.train"]  # inside a function


if __name__ == "__main__":
    g = graph()
    print("\n".join(upward(g)) or "no upward import")
    print("\n".join(" -> ".join(c) for c in cycles(g)) or "no cycle")
