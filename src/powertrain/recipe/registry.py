"""A name -> (builder, options schema) registry, shared by models and datasets.

Each entry registers a pydantic class for its own options, so a recipe's `model:` or `data:`
section is checked key by key, with the same one-line errors as the rest of the recipe.

The registries themselves live in data/registry.py and models/registry.py; each one made here is
listed by its section, so that `parse_recipe` checks a section's name and options through
`check_section` without importing data or models (they sit above the recipe).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..errors import RecipeError, closest, format_validation_error
from .strict import check_field


class Options(BaseModel):
    """Base for registered options: unknown keys are errors; numbers are numbers and finite; every whole
    number is a size, a count or an index, so it lies in [0, strict.MAX_SIZE] (strict.check_field)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers(cls, value, info):
        return check_field(cls.model_fields[info.field_name].annotation, value, sizes=True)


SECTIONS: dict[str, "Registry"] = {}  # recipe section -> its registry, filled as data/ and models/ load


@dataclass(frozen=True)
class Entry:
    name: str
    build: Callable[..., Any]
    options: type[Options]
    doc: str


class Registry:
    def __init__(self, section: str):
        self.section = section  # "model" or "data": the recipe section these entries fill
        self._entries: dict[str, Entry] = {}
        SECTIONS[section] = self

    def register(self, name: str, options: type[Options] = Options):
        """Decorator: `@MODELS.register("mlp", MLPOptions)` over `def build(opts, meta) -> nn.Module`."""

        def deco(fn):
            doc = (fn.__doc__ or "").strip().splitlines()
            self._entries[name] = Entry(name, fn, options, doc[0] if doc else "")
            return fn

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise RecipeError(
                f"{self.section}.name: unknown {self.section} '{name}'{closest(name, self._entries)}; "
                f"expected one of: {', '.join(self.names())}"
            )
        return self._entries[name]

    def options(self, section: dict) -> Options:
        """Validate a recipe section (a dict with `name` plus the entry's own keys)."""
        raw = dict(section)
        entry = self.get(raw.pop("name"))
        try:
            return entry.options.model_validate(raw)
        except ValidationError as err:
            raise RecipeError(format_validation_error(err, entry.options, prefix=self.section)) from None


def check_section(section: str, spec: dict) -> None:
    """Check a recipe section (`{"name": ..., **options}`) against its registry: the name, with a
    did-you-mean, and the entry's options. A section whose registry is not loaded is checked when its
    dataset or model is built (data.build, models.build validate again)."""
    registry = SECTIONS.get(section)
    if registry is not None:
        registry.options(spec)
