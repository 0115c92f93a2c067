"""Plain CNN: conv -> [BatchNorm] -> activation -> [max-pool] per stage, then flatten and dense layers.

Works on 1-D signals (C, L) and images (C, H, W). It expresses the source documents' CNNs, e.g. the
Keras CIFAR-10 CNN is `conv: [32, 64, 64], pool: [2, 2, 0], dense: [64], padding: valid`.
"""
from __future__ import annotations

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
    features = nn.Sequential(*layers)
    n_flat = dry_run(features, torch.zeros(2, *meta.input_shape))[0].numel()
    head = mlp_layers([n_flat, *opts.dense], opts.activation, 0.0)
    if opts.dropout:  # dropout before every Linear of the head
        head = [m for layer in head for m in ([nn.Dropout(opts.dropout), layer] if isinstance(layer, nn.Linear) else [layer])]
    last = [nn.Dropout(opts.dropout)] if opts.dropout else []
    return nn.Sequential(*layers, nn.Flatten(), *head, *last, nn.Linear(([n_flat] + opts.dense)[-1], output_size(meta)))
