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

from ..data.bundle import DataMeta
from .check import dry_run
from .registry import ACTIVATIONS, MODELS, output_size  # noqa: F401  (re-exported)

def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build(spec: dict, meta: DataMeta) -> nn.Module:
    """Build the model named by `spec["name"]` for data described by `meta`, and check its shapes."""
    entry = MODELS.get(spec["name"])
    model = entry.build(MODELS.options(spec), meta)
    dry_run(model, torch.zeros(2, *meta.input_shape, dtype=meta.input_dtype))
    return model


from . import autoencoder, cnn, gpt, mlp, resnet, rnn, transformer  # noqa: E402,F401  (register the built-in models)
