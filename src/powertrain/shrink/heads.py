"""Attention-head pruning for the `transformer` and `gpt` models: whole heads removed from every
SelfAttention, so that `c_attn` (query, key and value of each head) loses their rows and `c_proj`
their columns. Each layer keeps the same number of heads, the ones with the largest L2 norm of their
weights there (q, k, v rows, biases and c_proj columns); the heads keep their width, so one
`n_head` and `head_dim` in the recipe describe the pruned model (structured.py writes them).

Torch-Pruning's dependency graph does not follow a fused qkv Linear split into heads by view, so the
slicing is done here, by hand, on the model's own layout: c_attn's output is [q | k | v], each
n_head x head_dim.

>>> from powertrain.models.transformer import Block
>>> net = torch.nn.Sequential(Block(16, 4, 32))
>>> remove_heads(net, 0.5)
{'n_head': 2, 'head_dim': 4}
>>> tuple(net[0].attn.c_attn.weight.shape), tuple(net[0].attn.c_proj.weight.shape)
((24, 16), (16, 8))
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import RecipeError
from ..models.transformer import SelfAttention


def attention_layers(model: nn.Module) -> list[SelfAttention]:
    return [m for m in model.modules() if isinstance(m, SelfAttention)]


def head_widths(model: nn.Module) -> dict:
    """{"n_head": heads per layer, "head_dim": width of each head} of a model's attention layers."""
    a = attention_layers(model)[0]
    return {"n_head": a.n_head, "head_dim": a.inner // a.n_head}


def head_scores(a: SelfAttention) -> torch.Tensor:
    """(n_head,): squared L2 norm of each head's weights: its q, k, v rows (and biases) and c_proj columns."""
    hs, d = a.inner // a.n_head, a.c_attn.in_features
    score = a.c_attn.weight.detach().view(3, a.n_head, hs, d).pow(2).sum((0, 2, 3))
    if a.c_attn.bias is not None:
        score += a.c_attn.bias.detach().view(3, a.n_head, hs).pow(2).sum((0, 2))
    return score + a.c_proj.weight.detach().view(d, a.n_head, hs).pow(2).sum((0, 2))


def _linear(weight: torch.Tensor, bias) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


def remove_heads(model: nn.Module, heads: float) -> dict:
    """Remove int(heads x n_head) heads from every attention layer of `model` (in place), the lowest-scored
    in each layer; returns the pruned {"n_head", "head_dim"}."""
    layers = attention_layers(model)
    if not layers:
        raise RecipeError("--heads: the model has no attention layer (SelfAttention) to prune")
    n = layers[0].n_head
    drop = int(heads * n)
    if drop < 1 or drop >= n:
        raise RecipeError(f"--heads {heads:g} of {n} heads per layer removes {drop}; give a fraction that removes "
                          f"at least one head and keeps one (between {1 / n:g} and {(n - 1) / n:g})")
    for a in layers:
        hs = a.inner // a.n_head
        keep = head_scores(a).topk(n - drop).indices.sort().values  # (kept,): the heads kept, in their order
        within = (keep[:, None] * hs + torch.arange(hs, device=keep.device)).flatten()  # their columns in one of q, k, v
        rows = torch.cat([part * a.inner + within for part in range(3)])
        bias = a.c_attn.bias
        a.c_attn = _linear(a.c_attn.weight.detach()[rows], None if bias is None else bias.detach()[rows])
        a.c_proj = _linear(a.c_proj.weight.detach()[:, within], a.c_proj.bias.detach() if a.c_proj.bias is not None else None)
        a.n_head, a.inner = n - drop, (n - drop) * hs
    return head_widths(model)
