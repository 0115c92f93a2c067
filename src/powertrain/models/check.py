"""A dry forward pass that turns shape bugs into one-line errors naming the layer and both shapes.

Run on a batch of 2 in eval mode without gradients, so it consumes no random numbers and changes
no state (BatchNorm statistics stay as they are).
"""
from __future__ import annotations

import ast
import math
import re

import torch
from torch import nn

from ..errors import PowertrainError


class ShapeError(PowertrainError):
    exit_code = 2


def _expects(module: nn.Module) -> str:
    for attr in ("in_features", "in_channels", "input_size", "embed_dim", "normalized_shape", "num_embeddings"):
        if hasattr(module, attr):
            return f"{attr}={getattr(module, attr)}"
    return type(module).__name__


def _shape(x) -> str:
    if isinstance(x, torch.Tensor):
        return str(tuple(x.shape))
    if isinstance(x, (tuple, list)) and x:
        return _shape(x[0])
    return type(x).__name__


def dry_run(model: nn.Module, sample: torch.Tensor):
    """Return `model(sample)`; raise ShapeError if it fails or mixes samples across the batch dimension."""
    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    trace: list[tuple[str, str, str | None]] = []  # (layer, input shape, output shape or None if it failed)
    hooks = []
    for name, mod in leaves:
        hooks.append(mod.register_forward_pre_hook(lambda m, a, n=name: trace.append((n, _shape(a), None))))
        hooks.append(mod.register_forward_hook(
            lambda m, a, out, n=name: trace.__setitem__(-1, (n, trace[-1][1], _shape(out)))))
    cls, batch = type(model).__name__, sample.shape[0]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(sample)
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        reason = str(err).strip().splitlines()[0]
        by_name = dict(leaves)
        if trace and trace[-1][2] is None:  # failed inside a layer
            name, shape_in, _ = trace[-1]
            raise ShapeError(f"{cls}: layer '{name}' got input of shape {shape_in} but expects "
                             f"{_expects(by_name[name])} ({reason})") from None
        last = trace[-1] if trace else ("input", _shape(sample), _shape(sample))
        names = [n for n, _ in leaves]
        nxt = names[names.index(last[0]) + 1] if last[0] in names[:-1] else None
        size = re.search(r"invalid for input of size (\d+)", reason)
        has = f"{int(size.group(1)) // batch} values per sample" if size else f"shape {last[2]}"
        if nxt:
            raise ShapeError(f"{cls}: layer '{nxt}' expects {_expects(by_name[nxt])}, but after layer "
                             f"'{last[0]}' the data has {has} ({reason})") from None
        raise ShapeError(f"{cls}: after layer '{last[0]}' the data has {has} ({reason})") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    first = out[0] if isinstance(out, (tuple, list)) else out
    if isinstance(first, torch.Tensor) and first.dim() > 0 and first.shape[0] != batch:
        culprit = next(((n, s) for n, s, _ in trace if not s.startswith(f"({batch},")), None)
        where = f" first at layer '{culprit[0]}', which got {culprit[1]}" if culprit else ""
        if culprit and culprit[1].startswith("("):  # a tensor's shape: say what each sample had
            where += (f": {math.prod(ast.literal_eval(culprit[1])) // batch} values per sample, but it expects "
                      f"{_expects(dict(leaves)[culprit[0]])}")
        raise ShapeError(f"{cls}: a batch of {batch} samples came out as {first.shape[0]} rows{where}; "
                         f"a reshape (view) mixes samples: flatten with x.flatten(1) and fix the layer's size")
    return out
