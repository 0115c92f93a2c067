"""Error types whose message is a complete, one-line answer for the user (the CLI prints it as is)."""
from __future__ import annotations

import difflib
from typing import Optional, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError


class PowertrainError(Exception):
    """Base class: `str(err)` names the field or file, what was expected, and the fix."""

    exit_code = 1


class RecipeError(PowertrainError, ValueError):
    """A recipe, override or CLI argument is invalid (exit status 2)."""

    exit_code = 2


class RunDirError(PowertrainError):
    """A run directory is missing, foreign or corrupt."""

    exit_code = 2


class DataError(PowertrainError):
    """A dataset's files are missing or malformed."""

    exit_code = 2


class ModelError(PowertrainError):
    """A model does not fit its data (shapes, output width)."""

    exit_code = 2


class SettingError(PowertrainError):
    """An environment setting (POWERTRAIN_*) has a value that cannot be used."""

    exit_code = 2


class WriteError(RunDirError):
    """A write into a run directory failed (a full disk, a quota, a size limit): what, where, what is kept,
    how to go on (run/storage.py)."""


class NonFiniteLoss(PowertrainError):
    """The training loss became NaN or inf."""


class MissingExtra(PowertrainError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    exit_code = 2


def need_extra(module: str, extra: str, what: str):
    """`module` imported, or a one-line MissingExtra naming the pip extra, e.g.
    need_extra("mlflow", "mlflow", "run.mlflow")."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{what} needs the '{module.split('.')[0]}' package, which is not installed; "
                           f"pip install 'powertrain[{extra}]'") from None


def closest(word: str, choices) -> str:
    """' (did you mean 'x'?)' when a choice is close to `word`, else ''."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _fields_at(model: type[BaseModel], path: tuple) -> Optional[list[str]]:
    """Field names of the (nested) pydantic model found at `path`, if any."""
    for key in path:
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            return None
        ann = field.annotation
        if get_origin(ann) is Union:  # Optional[Sub]
            ann = next((a for a in get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return list(model.model_fields)


def format_validation_error(err: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """One line: `train.lr: expected a number > 0, got -1` for each problem, joined by '; '."""
    parts = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not str(x).startswith("function-"))
        key = ".".join(str(x) for x in ((prefix,) if prefix else ()) + loc)
        if e["type"] == "extra_forbidden":
            allowed = _fields_at(model, loc[:-1]) or []
            hint = closest(loc[-1], allowed)
            parts.append(f"{key}: unknown key{hint}; allowed keys: {', '.join(allowed)}")
        elif e["type"] == "missing":
            parts.append(f"{key}: required key is missing; add it to the recipe")
        else:
            msg = e["msg"].replace("Input should be", "expected").replace("Value error, ", "")
            msg = msg.replace(", got a number with a fractional part", " (not a fraction)").replace(
                ", unable to parse string as an integer", "")
            parts.append(f"{key}: {msg}, got {_short(e['input'])}" if loc else f"{key}: {msg}")
    return "; ".join(parts)


def _short(value, n: int = 60) -> str:
    """repr of `value`, cut to about `n` characters (a bad value may be a huge list)."""
    import reprlib

    text = reprlib.repr(value)
    return text if len(text) <= n else text[:n] + "..."
