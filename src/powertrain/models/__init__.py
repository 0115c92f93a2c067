"""Models: a registry of builders `build(opts, meta) -> nn.Module`, one family per file.

>>> from powertrain import models
>>> from powertrain.data import DataMeta
>>> net = models.build({"name": "mlp", "hidden": [3], "activation": "sigmoid"}, DataMeta((2,), "binary", 2))
>>> models.count_params(net)
13
"""
from __future__ import annotations

import torch
from torch import nn

from ..data import DataMeta
from ..registry import Registry
from .check import dry_run

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


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build(spec: dict, meta: DataMeta) -> nn.Module:
    """Build the model named by `spec["name"]` for data described by `meta`, and check its shapes."""
    entry = MODELS.get(spec["name"])
    model = entry.build(MODELS.options(spec), meta)
    dry_run(model, torch.zeros(2, *meta.input_shape, dtype=meta.input_dtype))
    return model


from . import autoencoder, cnn, gpt, mlp, resnet, rnn, transformer  # noqa: E402,F401  (register the built-in models)
