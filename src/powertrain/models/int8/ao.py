"""int8 through torchao (the maintained path; torch's eager `torch.ao.quantization` is deprecated):
`quantize_` swaps the weight of every `nn.Linear` for a torchao `Int8Tensor`.

- `ao-weight`: `Int8WeightOnlyConfig`: weights int8, one scale per output row (symmetric);
  activations stay fp32 and the weight is dequantized in the matmul.
- `ao-dynamic`: `Int8DynamicActivationInt8WeightConfig`: weights as above, and each activation row
  quantized to int8 on the fly, so the matmul runs in int8.

torchao quantizes Linear layers on the CPU; convolutions, LSTM and GRU stay fp32 (the eager
`--mode static` and `--mode dynamic` cover those).

Saved as safetensors, no pickle: each int8 weight as its integers `KEY` plus `KEY.__ao_scale` (and
`KEY.__ao_zero_point` if any), the other tensors as they are. Loading quantizes the recipe's model
the same way and copies those integers and scales into it: bit for bit.

>>> from torch import nn
>>> q = quantize_ao(nn.Sequential(nn.Linear(8, 4)), "ao-weight")
>>> q[0].weight.qdata.dtype
torch.int8
"""
from __future__ import annotations

import copy
import logging
from contextlib import contextmanager

import torch
from torch import nn

from ...errors import RecipeError, RunDirError, need_extra

AO_MODES = ("ao-weight", "ao-dynamic")


@contextmanager
def _quiet_import():
    """torchao logs a warning per optional CUDA kernel it cannot load on a CPU build, and torch one
    about an Enum it registers: noise on every command, not news."""
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def torchao_quantization():
    """`torchao.quantization`, or a one-line error naming the extra."""
    with _quiet_import():
        return need_extra("torchao.quantization", "shrink", "quantize --mode ao-weight/ao-dynamic")


def _config(mode: str):
    q = torchao_quantization()
    if mode == "ao-weight":
        return q.Int8WeightOnlyConfig()
    if mode == "ao-dynamic":
        return q.Int8DynamicActivationInt8WeightConfig()
    raise RecipeError(f"mode (--mode): expected one of {', '.join(AO_MODES)}, got '{mode}'")


def quantize_ao(model: nn.Module, mode: str, model_name: str = "") -> nn.Module:
    """An int8 copy of `model` (eval mode, CPU): its Linear weights as torchao Int8Tensors."""
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise RecipeError(f"--mode {mode}: model '{model_name or type(model).__name__}' has no Linear layer for "
                          f"torchao to quantize; use --mode static for a CNN, --mode dynamic for an RNN")
    q = copy.deepcopy(model).cpu().eval()
    torchao_quantization().quantize_(q, _config(mode))
    return q


def is_ao_tensor(t) -> bool:
    return hasattr(t, "qdata") and hasattr(t, "scale") and not t.is_quantized


def ao_layers(model: nn.Module) -> list[str]:
    """'name (Linear)' of each layer whose weight torchao made int8."""
    return [f"{n} ({type(m).__name__})" for n, m in model.named_modules()
            if isinstance(getattr(m, "weight", None), torch.Tensor) and is_ao_tensor(m.weight)]


def ao_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the model's state dict as plain tensors: int8 weights as integers plus scales."""
    out: dict[str, torch.Tensor] = {}
    for key, v in model.state_dict().items():
        if is_ao_tensor(v):
            out[key] = v.qdata.detach().contiguous()
            out[f"{key}.__ao_scale"] = v.scale.detach().contiguous()
            if getattr(v, "zero_point", None) is not None:
                out[f"{key}.__ao_zero_point"] = v.zero_point.detach().contiguous()
        else:
            out[key] = v.detach().contiguous()
    return out


def load_ao_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Fill a model quantized by `quantize_ao` with `ao_tensors` output, bit for bit."""
    used: set[str] = set()
    try:
        with torch.no_grad():
            for key, v in model.state_dict().items():
                used.add(key)
                if is_ao_tensor(v):
                    v.qdata.copy_(tensors[key])
                    v.scale.copy_(tensors[f"{key}.__ao_scale"])
                    used.add(f"{key}.__ao_scale")
                    if getattr(v, "zero_point", None) is not None:
                        v.zero_point.copy_(tensors[f"{key}.__ao_zero_point"])
                        used.add(f"{key}.__ao_zero_point")
                else:
                    v.copy_(tensors[key])
    except (KeyError, RuntimeError) as e:
        raise RunDirError(f"'{source}' does not match the recipe's int8 model ({type(e).__name__}: {e}); "
                          f"was it written for another recipe?") from None
    if set(tensors) - used:
        raise RunDirError(f"'{source}' holds tensors the recipe's int8 model lacks: {sorted(set(tensors) - used)[:3]}")
