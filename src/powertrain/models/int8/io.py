"""int8 models as safetensors: every tensor of a quantized model under its module path, the int8
weights as their integers plus `KEY.__scale`, `KEY.__zero_point` (and `KEY.__axis` per channel), biases
and float modules' tensors as they are. Loading fills a model of the same structure (the recipe's
model quantized the same way) bit for bit, through the modules' own `set_weight_bias`: no pickle.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ...errors import RunDirError


@contextlib.contextmanager
def quiet():
    """torch.ao.quantization warns on every call that it is deprecated (in favour of torchao; it works on 2.13)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated")
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel")
        warnings.filterwarnings("ignore", message=".*must run observer before calling calculate_qparams")
        warnings.filterwarnings("ignore", message="Please use quant_min and quant_max")
        yield


def _weighted(m: nn.Module) -> bool:
    """A quantized Linear or Conv (static, dynamic or fused with ReLU): int8 weight via weight()/bias()."""
    import torch.ao.nn.quantized as nnq

    return isinstance(m, (nnq.Linear, nnq.modules.conv._ConvNd))


def is_quantized_layer(m: nn.Module) -> bool:
    """A layer whose weights are int8: a quantized Linear or Conv, or a dynamic LSTM/GRU."""
    return _weighted(m) or _rnn(m)


def _rnn(m: nn.Module) -> bool:
    import torch.ao.nn.quantized.dynamic as nnqd

    return isinstance(m, nnqd.modules.rnn.RNNBase)


def _put(out: dict, key: str, t: torch.Tensor) -> None:
    """A tensor, or a quantized one as its integers plus `key.__scale`, `key.__zero_point` (, `key.__axis`)."""
    if not t.is_quantized:
        out[key] = t.detach().contiguous()
        return
    out[key] = t.int_repr().contiguous()
    if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        out[f"{key}.__scale"] = torch.tensor([t.q_scale()], dtype=torch.float64)
        out[f"{key}.__zero_point"] = torch.tensor([t.q_zero_point()], dtype=torch.int64)
    else:
        out[f"{key}.__scale"] = t.q_per_channel_scales().to(torch.float64).contiguous()
        out[f"{key}.__zero_point"] = t.q_per_channel_zero_points().to(torch.int64).contiguous()
        out[f"{key}.__axis"] = torch.tensor([t.q_per_channel_axis()], dtype=torch.int64)


def _get(tensors: dict, key: str, used: set) -> torch.Tensor:
    if key not in tensors:
        raise KeyError(key)
    used.add(key)
    t = tensors[key]
    if f"{key}.__scale" not in tensors:
        return t
    scale, zp = tensors[f"{key}.__scale"], tensors[f"{key}.__zero_point"]
    used.update({f"{key}.__scale", f"{key}.__zero_point"})
    with quiet():  # int8 integers give qint8, uint8 quint8
        if f"{key}.__axis" in tensors:
            used.add(f"{key}.__axis")
            return torch._make_per_channel_quantized_tensor(t, scale, zp, int(tensors[f"{key}.__axis"][0]))
        return torch._make_per_tensor_quantized_tensor(t, float(scale[0]), int(zp[0]))


def quantized_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of an int8 model under its module path: int8 weights with scales and zero points,
    fp32 biases, output scales of static layers, and the float modules' own parameters and buffers."""
    out: dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        p = f"{name}." if name else ""
        if _weighted(m):
            _put(out, p + "weight", m.weight())
            if m.bias() is not None:
                out[p + "bias"] = m.bias().detach().contiguous()
            out[p + "scale"] = torch.tensor([float(m.scale)], dtype=torch.float64)
            out[p + "zero_point"] = torch.tensor([int(m.zero_point)], dtype=torch.int64)
        elif _rnn(m):
            for k, w in m.get_weight().items():
                _put(out, p + k, w)
            for k, b in m.get_bias().items():
                out[p + k] = b.detach().contiguous()
        elif not any(_weighted(a) or _rnn(a) for a in _ancestors(model, name)):
            for k, v in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
                if v is not None:
                    _put(out, p + k, v)
    return out


def _ancestors(model: nn.Module, name: str) -> list[nn.Module]:
    parts, mods, m = name.split(".") if name else [], [], model
    for part in parts[:-1]:
        m = getattr(m, part)
        mods.append(m)
    return mods


def load_quantized_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Fill an int8 model of the same structure with `quantized_tensors` output (bit for bit)."""
    used: set = set()
    try:
        for name, m in model.named_modules():
            p = f"{name}." if name else ""
            if _weighted(m):
                bias = _get(tensors, p + "bias", used) if p + "bias" in tensors else None
                with quiet():
                    m.set_weight_bias(_get(tensors, p + "weight", used), bias)
                m.scale = float(_get(tensors, p + "scale", used)[0])
                m.zero_point = int(_get(tensors, p + "zero_point", used)[0])
            elif _rnn(m):
                keys = [*m.get_weight().keys(), *m.get_bias().keys()]
                with quiet():
                    m.set_weight_bias({k: _get(tensors, p + k, used) for k in keys})
            elif not any(_weighted(a) or _rnn(a) for a in _ancestors(model, name)):
                for k, v in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
                    if v is not None:
                        with torch.no_grad():
                            v.copy_(_get(tensors, p + k, used))
    except (KeyError, RuntimeError) as e:
        raise RunDirError(f"'{source}' does not match the recipe's int8 model ({type(e).__name__}: {e}); "
                          f"was it written for another recipe?") from None
    if set(tensors) - used:
        raise RunDirError(f"'{source}' holds tensors the recipe's int8 model lacks: {sorted(set(tensors) - used)[:3]}")


def save_quantized(model: nn.Module, path: Path, metadata: dict) -> int:
    """Write the int8 model's tensors to `path` (safetensors, atomically); returns its size in bytes."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(quantized_tensors(model), str(tmp), metadata={k: str(v) for k, v in metadata.items()})
    os.replace(tmp, path)
    return path.stat().st_size
