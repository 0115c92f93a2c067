"""A sweep's search space (SPACE.yaml): recipe keys and the values a sweep may give them.

    model.conv: [[16, 32, 32], [32, 64, 64]]   # a list: one of these values
    train.lr: {log: [1.0e-4, 1.0e-2]}         # a float, sampled on a log scale
    train.dropout: {float: [0.0, 0.3]}        # a float, uniform
    train.epochs: {int: [5, 60]}              # a whole number (add `log: true` for a log scale)

Every key is checked against the recipe schema, at its extreme values, before any trial starts.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import RecipeError
from ..recipe import load_recipe
from ..recipe.strict import load_yaml

KINDS = ("log", "float", "int")


@dataclass(frozen=True)
class Dim:
    key: str
    kind: str  # "choice", "log", "float" or "int"
    low: Any = None
    high: Any = None
    choices: tuple = ()
    log: bool = False

    def extremes(self) -> list:
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def suggest(self, trial):
        """The value for an Optuna trial (choices are stored as JSON text: Optuna keeps only scalars)."""
        if self.kind == "choice":
            return json.loads(trial.suggest_categorical(self.key, [json.dumps(c) for c in self.choices]))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log")

    def value(self, params: dict):
        """This key's value in an Optuna trial's params."""
        v = params[self.key]
        return json.loads(v) if self.kind == "choice" else v


def override(key: str, value) -> str:
    """`key=value` as the command line and `apply_overrides` read it (YAML flow: lists, numbers, text)."""
    return f"{key}={json.dumps(value) if not isinstance(value, float) else repr(value)}"


def _number(v):
    """'1e-4' -> 0.0001: PyYAML leaves a float without a dot as a string; anything else unchanged."""
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return v
        return f if math.isfinite(f) else v
    return v


def _dim(where: str, key: str, spec) -> Dim:
    if isinstance(spec, list):
        if not spec:
            raise RecipeError(f"{where}: {key}: an empty list of choices; give at least one value")
        return Dim(key, "choice", choices=tuple(spec))
    if not isinstance(spec, dict) or len(set(spec) & set(KINDS)) != 1:
        raise RecipeError(f"{where}: {key}: expected a list of choices or one of {{log: [lo, hi]}}, "
                          f"{{float: [lo, hi]}}, {{int: [lo, hi]}}; got {spec!r}")
    kind = next(k for k in KINDS if k in spec)
    extra = set(spec) - {kind, "log"} if kind == "int" else set(spec) - {kind}
    bounds = spec[kind]
    if isinstance(bounds, list):  # YAML 1.1 reads 1e-4 (no dot) as text
        bounds = [_number(b) for b in bounds]
    if extra:
        raise RecipeError(f"{where}: {key}: unknown field(s) {sorted(extra)} beside '{kind}'")
    if (not isinstance(bounds, list) or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)):
        raise RecipeError(f"{where}: {key}: {kind} needs [low, high] numbers, got {bounds!r}")
    low, high = bounds
    if kind == "int" and not all(isinstance(b, int) for b in bounds):
        raise RecipeError(f"{where}: {key}: int bounds must be whole numbers, got {bounds!r}")
    if not low < high:
        raise RecipeError(f"{where}: {key}: low ({low}) must be below high ({high})")
    log = kind == "log" or (kind == "int" and bool(spec.get("log")))
    if log and low <= 0:
        raise RecipeError(f"{where}: {key}: a log scale needs low > 0, got {low}")
    return Dim(key, kind, float(low) if kind != "int" else low, float(high) if kind != "int" else high, log=log)


def parse_space(raw, where: str = "space") -> list[Dim]:
    if not isinstance(raw, dict) or not raw:
        raise RecipeError(f"{where}: expected a mapping of recipe keys to ranges, e.g. 'train.lr: {{log: [1e-4, 1e-2]}}'")
    return [_dim(where, str(k), v) for k, v in raw.items()]


def load_space(path: str | Path) -> tuple[list[Dim], dict]:
    """The dimensions and the raw mapping of a SPACE.yaml file."""
    path = Path(path)
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"), f"--space {path}")
    except OSError as e:
        raise RecipeError(f"--space {path}: cannot read it ({e.strerror}); give a YAML file of recipe keys and ranges") from None
    except UnicodeDecodeError:
        raise RecipeError(f"--space {path}: not UTF-8 text; give a YAML file of recipe keys and ranges") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"--space {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_space(raw, str(path)), raw


def check_space(dims: list[Dim], base: dict, where: str = "space") -> None:
    """Every key at each of its extreme values makes a valid recipe; else a one-line error naming it."""
    for d in dims:
        for v in d.extremes():
            try:
                load_recipe(base, [override(d.key, v)])
            except RecipeError as e:
                raise RecipeError(f"{where}: {d.key}={json.dumps(v)} does not make a valid recipe: {e}") from None


def overrides(dims: list[Dim], params: dict) -> list[str]:
    return [override(d.key, d.value(params)) for d in dims]
