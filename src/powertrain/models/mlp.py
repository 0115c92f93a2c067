"""Multilayer perceptron: flatten, then Linear -> [BatchNorm] -> activation -> [Dropout] per hidden width."""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from ..data.bundle import DataMeta
from ..recipe.registry import Options
from .registry import ACTIVATIONS, MODELS, output_size


class MLPOptions(Options):
    hidden: list[int] = [128]  # widths of the hidden layers; [] is logistic/linear regression
    activation: Literal["relu", "gelu", "tanh", "sigmoid", "silu", "leaky_relu", "elu"] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    batch_norm: bool = False


def mlp_layers(widths: list[int], activation: str, dropout: float = 0.0, batch_norm: bool = False) -> list[nn.Module]:
    """Hidden layers mapping widths[0] -> ... -> widths[-1], each followed by its activation."""
    layers: list[nn.Module] = []
    for w_in, w_out in zip(widths[:-1], widths[1:]):
        layers.append(nn.Linear(w_in, w_out))
        if batch_norm:
            layers.append(nn.BatchNorm1d(w_out))
        layers.append(ACTIVATIONS[activation]())
        if dropout:
            layers.append(nn.Dropout(dropout))
    return layers


@MODELS.register("mlp", MLPOptions)
def build_mlp(opts: MLPOptions, meta: DataMeta) -> nn.Module:
    """MLP over the flattened input; any widths and activations."""
    n_in = 1
    for d in meta.input_shape:
        n_in *= d
    widths = [n_in, *opts.hidden]
    return nn.Sequential(nn.Flatten(), *mlp_layers(widths, opts.activation, opts.dropout, opts.batch_norm),
                         nn.Linear(widths[-1], output_size(meta)))
