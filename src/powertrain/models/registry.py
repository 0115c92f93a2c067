"""The model registry, and what every family's builder shares: a leaf module, so that each family
registers itself without importing the package that imports it.

>>> from powertrain.models.registry import MODELS
>>> "gpt" in MODELS.names()
True
"""
from __future__ import annotations

from torch import nn

from ..data.bundle import DataMeta
from ..recipe.registry import Registry

MODELS = Registry("model")

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
               "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU}


def output_size(meta: DataMeta) -> int:
    """Width of a classifier/regressor head for this dataset."""
    if meta.task == "binary":
        return 1
    if meta.task == "multiclass":
        return int(meta.num_classes)
    return int(meta.targets)
