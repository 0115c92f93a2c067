"""Plain CNN: conv -> [BatchNorm] -> activation -> [max-pool] per stage, then flatten and dense layers.

Works on 1-D signals (C, L) and images (C, H, W). It expresses the source documents' CNNs, e.g. the
Keras CIFAR-10 CNN is `conv: [32, 64, 64], pool: [2, 2, 0], dense: [64], padding: valid`.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..data.bundle import DataMeta
from ..recipe.registry import Options
from .registry import ACTIVATIONS, MODELS, output_size
from .check import dry_run
from .mlp import mlp_layers


class CNNOptions(Options):
    conv: list[int] = [32, 64]  # output channels of each conv layer
    pool: list[int] = []  # max-pool size after each conv layer (0 or 1: none); default 2 after each
    kernel: int = Field(3, ge=1)
    stride: int = Field(1, ge=1)
    padding: Literal["same", "valid"] = "same"
    dense: list[int] = [128]  # hidden dense widths after flattening
    activation: Literal["relu", "gelu", "tanh", "sigmoid", "silu", "leaky_relu", "elu"] = "relu"
    batch_norm: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)  # before each dense layer

    @model_validator(mode="after")
    def _pool_len(self):
        if not self.pool:
            self.pool = [2] * len(self.conv)
        if len(self.pool) != len(self.conv):
            raise ValueError(f"pool has {len(self.pool)} entries but conv has {len(self.conv)}; give one per conv")
        return self


def flat_size(shape, conv: list[int], pool: list[int], kernel: int, stride: int, pad: int) -> int:
    """Values per sample after the conv/pool stages, by the layers' size formulas (no forward pass: one on
    the meta device would load torch's symbolic-shape machinery, about a second); < 1 if a stage empties it.

    >>> flat_size((1, 40), [8, 16], [2, 2], 3, 1, 1), flat_size((3, 32, 32), [32, 64, 64], [2, 2, 0], 3, 1, 0)
    (160, 1024)
    """
    dims = list(shape[1:])
    for p in pool:
        dims = [(d + 2 * pad - kernel) // stride + 1 for d in dims]
        dims = [d // p if p > 1 else d for d in dims]  # MaxPool(p): kernel p, stride p, floor
    return conv[-1] * math.prod(dims) if min(dims) >= 1 else 0


@MODELS.register("cnn", CNNOptions)
def build_cnn(opts: CNNOptions, meta: DataMeta) -> nn.Module:
    """Conv/pool stages then dense layers, 1-D or 2-D by the input's rank."""
    if len(meta.input_shape) not in (2, 3):
        raise ValueError(f"cnn needs inputs shaped (C, L) or (C, H, W), got {meta.input_shape}")
    two_d = len(meta.input_shape) == 3
    Conv, Pool, Norm = (nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d) if two_d else (nn.Conv1d, nn.MaxPool1d, nn.BatchNorm1d)
    pad = opts.kernel // 2 if opts.padding == "same" else 0
    layers: list[nn.Module] = []
    c_in = meta.input_shape[0]
    for c_out, p in zip(opts.conv, opts.pool):
        layers.append(Conv(c_in, c_out, opts.kernel, opts.stride, pad))
        if opts.batch_norm:
            layers.append(Norm(c_out))
        layers.append(ACTIVATIONS[opts.activation]())
        if p > 1:
            layers.append(Pool(p))
        c_in = c_out
    n_flat = flat_size(meta.input_shape, opts.conv, opts.pool, opts.kernel, opts.stride, pad)
    if n_flat < 1:  # a stage shrinks the input to nothing: the dry run names the layer and its shapes
        dry_run(nn.Sequential(*layers), torch.zeros(2, *meta.input_shape))
    head = mlp_layers([n_flat, *opts.dense], opts.activation, 0.0)
    if opts.dropout:  # dropout before every Linear of the head
        head = [m for layer in head for m in ([nn.Dropout(opts.dropout), layer] if isinstance(layer, nn.Linear) else [layer])]
    last = [nn.Dropout(opts.dropout)] if opts.dropout else []
    return nn.Sequential(*layers, nn.Flatten(), *head, *last, nn.Linear(([n_flat] + opts.dense)[-1], output_size(meta)))
