"""Strict reading of recipes: YAML without surprises, and numbers that are numbers.

YAML (`load_yaml`): a key given twice in one mapping is refused (PyYAML keeps the last silently); a
document nested deeper than MAX_DEPTH, or whose aliases expand to more than MAX_NODES values (a "billion
laughs" file) or refer to themselves, is refused before anything walks it; `1e-3` is a float (YAML 1.1
reads it as text). `check_tree` applies the same bounds to a recipe given as a dict.

Numbers (`check_field`, run by the recipe's and the registries' base classes before pydantic): a field
that holds whole numbers takes a whole number (`true` is not 1, `"64"` is text, 64.0 is 64); a float field
takes a number, not a bool or text; no number is beyond MAX_INT. A model's or dataset's options are sizes,
counts and indices, so their whole numbers also lie in [0, MAX_SIZE] (`sizes=True`).

>>> load_yaml("lr: 1e-3\\nepochs: 5", "recipe")
{'lr': 0.001, 'epochs': 5}
>>> load_yaml("a: 1\\na: 2", "recipe.yaml")
Traceback (most recent call last):
...
powertrain.errors.RecipeError: recipe.yaml: key 'a' appears twice in one mapping (line 2); keep one of them
"""
from __future__ import annotations

import math
import re
import types
import typing
from typing import Any, Literal, Union

import yaml

from ..errors import RecipeError

MAX_DEPTH = 32  # nesting of mappings and lists; a recipe needs ~5
MAX_NODES = 100_000  # values after aliases are expanded; a recipe has ~100
MAX_INT = 2**53  # no whole number in a recipe is larger (steps, sizes, seeds stay exact in JSON and float64)
MAX_SIZE = 2**31 - 1  # a model's or dataset's size or count: a tensor dimension


class _Loader(yaml.SafeLoader):
    """SafeLoader with a depth bound on composing and duplicate keys refused."""

    where = "recipe"

    def compose_node(self, parent, index):
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise RecipeError(f"{self.where}: nested deeper than {MAX_DEPTH} levels (line {mark.line + 1}); a "
                                  f"recipe needs a few levels: flatten it")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    raise RecipeError(f"{self.where}: a mapping key must be plain text or a number (line "
                                      f"{key_node.start_mark.line + 1}); write `key: value`") from None
                if key in seen:
                    raise RecipeError(f"{self.where}: key {key!r} appears twice in one mapping (line "
                                      f"{key_node.start_mark.line + 1}); keep one of them")
                seen[key] = True
        return super().construct_mapping(node, deep=deep)


# 1e-3, 2E5, 1.5e3: floats (YAML 1.1 wants a dot and a signed exponent, and reads these as text)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789."))


def load_yaml(text: str, where: str) -> Any:
    """`text` parsed as one YAML document with the bounds above; `where` names the file in errors."""
    loader = _Loader(text)
    loader.where = where
    try:
        data = loader.get_single_data()
    except RecursionError:
        raise RecipeError(f"{where}: nested too deeply; a recipe needs a few levels: flatten it") from None
    finally:
        loader.dispose()
    check_tree(data, where)
    return data


def check_tree(obj: Any, where: str) -> None:
    """Refuse a value nested deeper than MAX_DEPTH, larger than MAX_NODES once shared parts (YAML aliases)
    are counted every time they occur, or containing itself. Iterative: no recursion limit to hit."""
    sizes: dict[int, int] = {}  # id -> expanded size of a finished container
    stack: list[tuple[Any, int, bool]] = [(obj, 1, False)]
    open_ids: set[int] = set()
    while stack:
        node, depth, done = stack.pop()
        if not isinstance(node, (dict, list, tuple)):
            continue
        key = id(node)
        children = list(node.items()) if isinstance(node, dict) else list(node)
        children = [c for kv in children for c in (kv if isinstance(node, dict) else (kv,))]
        if done:
            open_ids.discard(key)
            total = 1 + sum(sizes.get(id(c), 1) for c in children)
            if total > MAX_NODES:
                raise RecipeError(f"{where}: {total:,}+ values once its aliases are expanded (at most {MAX_NODES:,}); "
                                  f"a recipe is small: remove the repeated aliases")
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in open_ids:
            raise RecipeError(f"{where}: an alias refers to a value that contains it (a loop); remove it")
        if depth > MAX_DEPTH:
            raise RecipeError(f"{where}: nested deeper than {MAX_DEPTH} levels; a recipe needs a few levels: flatten it")
        open_ids.add(key)
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children if isinstance(c, (dict, list, tuple)))


# ---------------------------------------------------------------- numbers
def _args(annotation) -> tuple:
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        return tuple(a for a in typing.get_args(annotation) if a is not type(None))
    return (annotation,)


def _container(a) -> bool:
    return typing.get_origin(a) in (list, tuple, set, frozenset, dict)


def _kind(annotation) -> str | None:
    """'int', 'float' or None (anything else) for a plain value of `annotation` (its containers aside); a
    union that admits bool or text is None."""
    args = tuple(a for a in _args(annotation) if not _container(a))
    if not args:
        return None
    if any(a is bool or a is str or a is Any for a in args):
        return None
    if len(args) == 1 and typing.get_origin(args[0]) is Literal:
        values = typing.get_args(args[0])
        return "int" if values and all(type(v) is int for v in values) else None
    if all(a is int for a in args):
        return "int"
    if all(a in (int, float) for a in args):
        return "float"
    return None


def _items(annotation):
    """The element annotation of list[X] / tuple[X, ...] / tuple[X, Y] (per position), else None."""
    for a in _args(annotation):
        origin = typing.get_origin(a)
        if origin in (list, tuple, set, frozenset):
            inner = typing.get_args(a)
            if origin is tuple and inner and inner[-1] is not Ellipsis:
                return list(inner)
            return inner[0] if inner else None
    return None


def check_field(annotation, value, *, sizes: bool = False):
    """`value` checked against the numeric parts of `annotation`; returns it (64.0 -> 64 for whole numbers).
    A ValueError's text says what was expected: pydantic names the field."""
    kind = None if isinstance(value, (list, tuple, dict)) else _kind(annotation)
    if kind is not None and value is not None:
        if isinstance(value, bool):
            raise ValueError(f"expected {'a whole number' if kind == 'int' else 'a number'}, not a yes/no value")
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                return value  # not a number at all: pydantic says so ("expected a valid integer")
            raise ValueError(f"expected {'a whole number' if kind == 'int' else 'a number'}, not text (write "
                             f"{value.strip()} without quotes)")
        if kind == "int" and isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, int):
            sizes = sizes and kind == "int"  # a float option (a rate, a fraction) is not a size
            low = 0 if sizes else -MAX_INT
            high = MAX_SIZE if sizes else MAX_INT
            if not low <= value <= high:
                what = "a size or count" if sizes else "a whole number"
                raise ValueError(f"expected {what} in [{low:,}, {high:,}]")
        return value
    inner = _items(annotation)
    if inner is not None and isinstance(value, (list, tuple)):
        kinds = inner if isinstance(inner, list) else [inner] * len(value)
        out = []
        for i, v in enumerate(value):
            try:
                out.append(check_field(kinds[i], v, sizes=sizes) if i < len(kinds) else v)
            except ValueError as e:
                raise ValueError(f"item {i} ({v!r}): {e}") from None
        return type(value)(out)
    return value


def clean_name(name: str) -> str:
    """A name as one folder name: letters, digits, '.', '_' and '-' (others become '-'), no leading dot or
    dash, at most 100 characters; 'run' if nothing is left.

    >>> clean_name("../../etc/cron.d/x"), clean_name("my run: v2"), clean_name("..")
    ('etc-cron.d-x', 'my-run-v2', 'run')
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip(".-")[:100].strip(".-")
    return cleaned or "run"
