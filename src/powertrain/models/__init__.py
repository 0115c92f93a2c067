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
from ..errors import ModelError, PowertrainError
from .check import check_memory, dry_run
from .registry import ACTIVATIONS, MODELS, output_size  # noqa: F401  (re-exported)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build(spec: dict, meta: DataMeta, batch_size: int | None = None, device=None) -> nn.Module:
    """Build the model named by `spec["name"]` for data described by `meta`, and check its shapes.

    Before any weight is allocated the model is built on the meta device: one whose training on batches of
    `batch_size` (2 if unknown) would not fit in the memory of `device` (None/'auto': CUDA if present, else
    this machine's), or that has an empty layer (a size 0 in the recipe), is a one-line ModelError with the
    figure (check.check_memory)."""
    entry = MODELS.get(spec["name"])
    opts = MODELS.options(spec)
    check_memory(lambda: entry.build(opts, meta), meta, batch_size, f"model '{spec['name']}'", device=device)
    try:
        model = entry.build(opts, meta)
    except PowertrainError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, OverflowError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"model '{spec['name']}': cannot be built with these options ({reason[:200]}); "
                         f"check the model section's sizes") from None
    dry_run(model, torch.zeros(2, *meta.input_shape, dtype=meta.input_dtype))
    return model


from . import autoencoder, cnn, gpt, mlp, resnet, rnn, transformer  # noqa: E402,F401  (register the built-in models)
