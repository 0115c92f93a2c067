"""int8 forms of a float model, and how they are rebuilt from a file.

- `ao-weight`, `ao-dynamic`: torchao on the Linear layers (ao.py).
- `dynamic`: every Linear, LSTM and GRU with int8 weights, activations quantized on the fly.
- `static`: weights and activations int8, ranges calibrated; eager mode needs a plain Sequential stack
  (the `cnn` and `mlp` families), whose Conv/Linear [+ BatchNorm] [+ ReLU] runs are fused.

Files hold int8 tensors with their scales and zero points as safetensors (io.py, ao.py), never a
pickle: `rebuild` makes the same int8 structure from the recipe's float model, and the tensors fill it.
shrink/quantize.py makes quantized runs; train/load.py reads them.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from ...errors import RecipeError
from .ao import AO_MODES, quantize_ao
from .io import quiet as _quiet

MODES = ("dynamic", "static", *AO_MODES)
DYNAMIC_TYPES = (nn.Linear, nn.LSTM, nn.GRU)
STATIC_MODELS = ("cnn", "mlp")


# ---------------------------------------------------------------- the transforms
def _fuse_groups(seq: nn.Sequential) -> list[list[str]]:
    """Runs of [Conv or Linear, BatchNorm?, ReLU?] in a Sequential, as fuse_modules names them."""
    mods, groups, i = list(seq), [], 0
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    while i < len(mods):
        if isinstance(mods[i], (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            group, j = [str(i)], i + 1
            if j < len(mods) and isinstance(mods[j], norms) and not isinstance(mods[i], nn.Linear):
                group.append(str(j))
                j += 1
            if j < len(mods) and isinstance(mods[j], nn.ReLU):
                group.append(str(j))
                j += 1
            if len(group) > 1:
                groups.append(group)
            i = j
        else:
            i += 1
    return groups


def _static_skeleton(model: nn.Module, model_name: str) -> nn.Module:
    """A copy of `model` fused, wrapped in Quant/DeQuant stubs and prepared with observers (x86/fbgemm)."""
    from torch.ao.quantization import QuantWrapper, fuse_modules, get_default_qconfig, prepare

    if model_name not in STATIC_MODELS or not isinstance(model, nn.Sequential):
        raise RecipeError(f"--mode static: eager-mode static int8 is offered for models {', '.join(STATIC_MODELS)} "
                          f"(plain Sequential stacks), not model '{model_name}'; use --mode dynamic, which "
                          f"quantizes its Linear/LSTM/GRU layers")
    with _quiet():
        m = fuse_modules(copy.deepcopy(model).eval(), _fuse_groups(model))
        wrapped = QuantWrapper(m).eval()
        wrapped.qconfig = get_default_qconfig(torch.backends.quantized.engine)
        return prepare(wrapped)


def quantize_model(model: nn.Module, mode: str = "dynamic", model_name: str = "",
                   calibration: Optional[list[torch.Tensor]] = None) -> nn.Module:
    """An int8 copy of `model` (eval mode, CPU). `calibration`: input batches for static ranges.
    `mode`: dynamic, static (eager torch.ao.quantization), ao-weight, ao-dynamic (torchao; ao.py).

    >>> q = quantize_model(nn.Sequential(nn.Linear(8, 4)))
    >>> type(q[0]).__name__
    'Linear'
    >>> q[0].weight().dtype
    torch.qint8
    """
    model = model.cpu().eval()
    if mode in AO_MODES:
        return quantize_ao(model, mode, model_name)
    if mode == "dynamic":
        if not any(isinstance(m, DYNAMIC_TYPES) for m in model.modules()):
            raise RecipeError(f"--mode dynamic: model '{model_name or type(model).__name__}' has no Linear, LSTM or "
                              f"GRU layer to quantize; use --mode static for a CNN")
        from torch.ao.quantization import quantize_dynamic

        with _quiet():
            return quantize_dynamic(copy.deepcopy(model), set(DYNAMIC_TYPES), dtype=torch.qint8)
    if mode != "static":
        raise RecipeError(f"mode (--mode): expected one of {', '.join(MODES)}, got '{mode}'")
    from torch.ao.quantization import convert

    prepared = _static_skeleton(model, model_name)
    with torch.no_grad(), _quiet():
        for x in calibration or []:
            prepared(x.cpu())
        q = convert(prepared)
        probe = (calibration or [None])[0]
        if probe is not None:
            try:
                q(probe[:2].cpu())
            except (NotImplementedError, RuntimeError) as e:
                first = str(e).strip().splitlines()[0][:200]
                raise RecipeError(f"--mode static: backend '{torch.backends.quantized.engine}' cannot run model "
                                  f"'{model_name}' in int8 ({first}); use --mode dynamic") from None
    return q


def rebuild(skeleton: nn.Module, mode: str, model_name: str, sample: torch.Tensor) -> nn.Module:
    """The int8 structure `quantize_model` made for `mode`, with placeholder values: the file's tensors
    fill it. `sample`: one input batch (static mode runs it once; any range will do)."""
    if mode != "static":
        return quantize_model(skeleton, mode, model_name)
    from torch.ao.quantization import convert

    prepared = _static_skeleton(skeleton, model_name)
    with torch.no_grad(), _quiet():
        prepared(sample.cpu())
        return convert(prepared)


def load(qmodel: nn.Module, mode: str, path) -> None:
    """Fill `rebuild`'s int8 model from the safetensors file at `path`; a one-line error names a file
    that cannot be read."""
    from safetensors.torch import load_file

    from ...errors import RunDirError
    from .ao import load_ao_tensors
    from .io import load_quantized_tensors

    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise RunDirError(f"'{path}' is unreadable ({e}); quantize the parent run again") from None
    (load_ao_tensors if mode in AO_MODES else load_quantized_tensors)(qmodel, tensors, str(path))
