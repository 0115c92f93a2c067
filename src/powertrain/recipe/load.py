"""Loading recipes: built-in names, YAML files, dicts; then dotted `section.key=value` overrides.

>>> from powertrain import load_recipe
>>> r = load_recipe("xor", ["train.epochs=10"])
>>> r.train.epochs
10
"""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

import yaml

from ..errors import RecipeError, closest
from .schema import Recipe, parse_recipe
from .strict import check_tree, load_yaml


def builtin_recipes() -> dict[str, Path]:
    """Name -> path of each recipe shipped in the package."""
    folder = resources.files("powertrain.recipe") / "builtin"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def read_raw(source: str | Path) -> dict:
    path = Path(source)
    known = {} if path.suffix else builtin_recipes()
    if str(source) in known:
        path = known[str(source)]
    elif not path.suffix and not path.is_file():  # a file without suffix (`powertrain train ./myrecipe`) is read
        raise RecipeError(
            f"recipe '{source}': not a built-in recipe{closest(str(source), known)} and not a file; "
            f"run `powertrain recipes` to list them, or pass a path to a .yaml file"
        )
    if not path.is_file():
        raise RecipeError(f"recipe file '{path}': not found; pass an existing .yaml path or a built-in name")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"recipe file '{path}': not a text YAML recipe (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start} is not UTF-8 text); pass a .yaml recipe file or a built-in name") from None
    if "\x00" in text:
        raise RecipeError(f"recipe file '{path}': not a text YAML recipe (it contains NUL bytes: a binary file); "
                          f"pass a .yaml recipe file or a built-in name")
    try:
        raw = load_yaml(text, f"recipe file '{path}'")
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise RecipeError(f"recipe file '{path}': invalid YAML{line}; check indentation and colons") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe file '{path}': expected a mapping with sections data, model, train, run")
    raw.setdefault("name", path.stem)
    data = raw.get("data")
    for key in ("path", "test_path"):  # a relative data file next to the recipe wins over the working directory
        rel = data.get(key) if isinstance(data, dict) else None
        if isinstance(rel, str) and not Path(rel).expanduser().is_absolute() and (path.parent / rel).exists():
            data[key] = str((path.parent / rel).resolve())
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` overrides; values are parsed as YAML (`3e-3`, `[64, 32]`, `true`)."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override '{item}': expected key.path=value, e.g. train.lr=3e-3")
        key, _, text = item.partition("=")
        try:
            value = load_yaml(text, f"override '{item}'") if text.strip() else None
        except yaml.YAMLError:
            raise RecipeError(f"override '{item}': the value is not valid YAML; quote text, e.g. "
                              f"{key}='a b', and write lists as [1, 2]") from None
        if isinstance(value, str):  # YAML 1.1 reads '3e-3' as a string
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                pass
        node, parts = raw, key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise RecipeError(f"override '{item}': {'.'.join(parts[: i + 1])} is a value, not a section")
            node = nxt
        node[parts[-1]] = value
    return raw


def load_recipe(source: str | Path | dict, overrides: list[str] | None = None) -> Recipe:
    """Load a built-in recipe by name, a YAML file, or a dict; then apply dotted overrides."""
    if isinstance(source, dict):
        check_tree(source, "recipe")  # before deepcopy walks it
    raw = copy.deepcopy(source) if isinstance(source, dict) else read_raw(source)
    return parse_recipe(apply_overrides(raw, list(overrides or [])))
