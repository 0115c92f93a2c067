"""Recipes: a YAML file with sections `data`, `model`, `train`, `run`, validated by pydantic
(schema.py), loaded by name or path with dotted overrides (load.py). Built-in recipes are in builtin/.

>>> from powertrain.recipe import load_recipe
>>> load_recipe("xor", ["train.epochs=10"]).train.epochs
10
"""
from .load import read_raw, apply_overrides, builtin_recipes, load_recipe  # noqa: F401
from .schema import (INIT_KEYS, DistillConfig, EarlyStop, ModelSection, PrivacyConfig, Recipe,  # noqa: F401
                     RunConfig, Section, Strict, TrainConfig, parse_recipe)
from ..errors import RecipeError, closest, format_validation_error  # noqa: F401  (re-exported)
