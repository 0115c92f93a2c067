"""Error types whose message is a complete, one-line answer for the user (the CLI prints it as is)."""
from __future__ import annotations

import difflib


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


class NonFiniteLoss(PowertrainError):
    """The training loss became NaN or inf."""


def closest(word: str, choices) -> str:
    """' (did you mean 'x'?)' when a choice is close to `word`, else ''."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
