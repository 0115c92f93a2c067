"""Post-training int8 quantization of a trained run into a derived run, with size, latency and accuracy
before and after.

- `dynamic`: the weights of every Linear, LSTM and GRU become int8 (per tensor, symmetric); activations
  are quantized on the fly, batch by batch. Works for any model with such layers (MLP, RNN, the
  transformers' Linears); convolutions stay fp32.
- `static`: weights and activations int8, activation ranges calibrated on training samples. Eager-mode
  static quantization needs to know where the model starts and ends and which layers to fuse: it is
  offered for the `cnn` and `mlp` models (a plain nn.Sequential: Conv/Linear [+ BatchNorm] [+ ReLU]
  fused), and refused, naming the model, for the others.

Both use `torch.ao.quantization` on the CPU backend `torch.backends.quantized.engine` (x86 here: FBGEMM
+ oneDNN). torch marks that package deprecated in favour of torchao; on torch 2.13 it still works.

The int8 model is saved as safetensors (`checkpoints/quantized.safetensors`: int8 weights with their
scales and zero points, the rest as is), never as a pickle; `load_quantized` rebuilds the model from
the recipe, quantizes its structure the same way and loads those tensors into it, bit for bit.

>>> from powertrain.compress import quantize
>>> child = quantize("runs/mnist1d-gru")                                     # doctest: +SKIP
>>> json.loads((child / "derived.json").read_text())["report"]["size_ratio"]  # doctest: +SKIP
3.6
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from ..errors import RecipeError, RunDirError
from ..models import count_params
from ..recipe import Recipe, parse_recipe
from .derived import (QUANTIZED, child_recipe, create_child, evaluate_splits, finish_child, floats,
                      load_final_weights, make_trainer, open_trained, parent_metrics, update_derived)

MODES = ("dynamic", "static")
DYNAMIC_TYPES = (nn.Linear, nn.LSTM, nn.GRU)
STATIC_MODELS = ("cnn", "mlp")


@contextlib.contextmanager
def _quiet():
    """torch.ao.quantization warns on every call that it is deprecated (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated")
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel")
        warnings.filterwarnings("ignore", message=".*must run observer before calling calculate_qparams")
        warnings.filterwarnings("ignore", message="Please use quant_min and quant_max")
        yield


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

    >>> q = quantize_model(nn.Sequential(nn.Linear(8, 4)))
    >>> type(q[0]).__name__
    'Linear'
    >>> q[0].weight().dtype
    torch.qint8
    """
    model = model.cpu().eval()
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


# ---------------------------------------------------------------- int8 weights as safetensors
def _weighted(m: nn.Module) -> bool:
    """A quantized Linear or Conv (static, dynamic or fused with ReLU): int8 weight via weight()/bias()."""
    import torch.ao.nn.quantized as nnq

    return isinstance(m, (nnq.Linear, nnq.modules.conv._ConvNd))


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
    with _quiet():  # int8 integers give qint8, uint8 quint8
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
                with _quiet():
                    m.set_weight_bias(_get(tensors, p + "weight", used), bias)
                m.scale = float(_get(tensors, p + "scale", used)[0])
                m.zero_point = int(_get(tensors, p + "zero_point", used)[0])
            elif _rnn(m):
                keys = [*m.get_weight().keys(), *m.get_bias().keys()]
                with _quiet():
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


def fp32_bytes(model: nn.Module, where: Path) -> int:
    """Size on disk of the model's fp32 weights in the checkpoints' format (safetensors)."""
    tmp = where / f".fp32-size-{os.getpid()}.safetensors"
    try:
        save_model(model, str(tmp))
        return tmp.stat().st_size
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def latency_s(models: dict[str, nn.Module], x: torch.Tensor, warmup: int = 20, repeats: int = 200,
              threads: int = 1) -> dict[str, float]:
    """Median wall time of one forward pass on `x` for each model (CPU, inference mode, `threads`
    threads), after `warmup` passes each. The models take turns in 10 blocks, so that a change of load
    on a shared machine hits them alike."""
    times: dict[str, list[float]] = {k: [] for k in models}
    blocks = min(10, repeats)
    with torch.inference_mode(), _threads(threads):
        for m in models.values():
            for _ in range(warmup):
                m(x)
        for b in range(blocks):
            for k, m in models.items():
                for _ in range(repeats // blocks + (b < repeats % blocks)):
                    t0 = time.perf_counter()
                    m(x)
                    times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


# ---------------------------------------------------------------- the derived run
def _cpu_recipe(recipe: Recipe) -> Recipe:
    raw = recipe.to_dict()
    raw["train"]["device"] = "cpu"  # int8 kernels are CPU kernels
    raw["train"]["precision"] = "fp32"
    return parse_recipe(raw)


def _calibration(trainer, samples: int) -> list[torch.Tensor]:
    split = trainer.data.train
    order = torch.arange(min(samples, len(split)))
    return [b[0] for b in split.batches(order, min(256, len(order)))]


def _sample(trainer) -> torch.Tensor:
    split = trainer.data.test or trainer.data.val or trainer.data.train
    return next(split.batches(torch.arange(1), 1))[0].cpu()


def quantize(run_dir: str | Path, mode: str = "dynamic", out: Optional[str | Path] = None,
             calibration_samples: int = 512, repeats: int = 200, warmup: int = 20, threads: int = 1) -> Path:
    """Quantize a trained (or pruned) run to int8 and write a derived run directory; returns its path.
    derived.json's report: size on disk, CPU latency per sample (batch 1, median of `repeats` after
    `warmup`, on `threads` threads) and metrics, fp32 against int8, and which layers became int8.

    >>> child = quantize("runs/digits-mlp", mode="dynamic")  # doctest: +SKIP
    """
    if mode not in MODES:
        raise RecipeError(f"mode (--mode): expected one of {', '.join(MODES)}, got '{mode}'")
    for name, v, lo in (("repeats", repeats, 1), ("warmup", warmup, 0), ("calibration_samples", calibration_samples, 1),
                        ("threads", threads, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise RecipeError(f"{name} (--{name.replace('_', '-')}): expected a whole number >= {lo}, got {v!r}")
    parent, recipe = open_trained(run_dir, "quantize")
    cpu_recipe = _cpu_recipe(child_recipe(recipe, parent))
    trainer = make_trainer(cpu_recipe, None, callbacks=[])
    load_final_weights(parent, recipe, trainer.model, trainer.device)
    fp32 = trainer.model.eval()
    qmodel = quantize_model(fp32, mode, recipe.model.name, _calibration(trainer, calibration_samples))
    settings = {"mode": mode, "engine": torch.backends.quantized.engine, "dtype": "qint8",
                "calibration_samples": calibration_samples if mode == "static" else 0}
    child = create_child(parent, cpu_recipe, out, f"int8-{mode}", "quantize", settings)
    int8_bytes = save_quantized(qmodel, child / "checkpoints" / QUANTIZED,
                                {"format": "powertrain-int8", **settings, "model": json.dumps(recipe.model.model_dump())})
    float_bytes = fp32_bytes(fp32, child / "checkpoints")
    x1 = _sample(trainer)
    lat = latency_s({"fp32": fp32, "int8": qmodel}, x1, warmup, repeats, threads)
    from ..measure import forward_flops

    trainer.forward_flops_per_sample = forward_flops(fp32, x1).total  # int8 does the same multiply-adds
    n_params = count_params(fp32)
    trainer.model = trainer.forward_model = qmodel
    results = evaluate_splits(trainer)
    quantized = [f"{n} ({type(m).__name__})" for n, m in qmodel.named_modules() if _weighted(m) or _rnn(m)]
    report = {
        "size_bytes": {"fp32": float_bytes, "int8": int8_bytes}, "size_ratio": float_bytes / int8_bytes,
        "latency_s_per_sample": lat, "latency_ratio": lat["fp32"] / lat["int8"],
        "latency_setup": {"batch": 1, "warmup": warmup, "repeats": repeats, "statistic": "median",
                          "threads": threads, "device": "cpu", "interleaved_blocks": min(10, repeats)},
        "metrics": {"parent": parent_metrics(parent), "final": {k: floats(v) for k, v in results.items()}},
        "quantized_layers": quantized, "params": n_params,
        "note": ("torch.ao.quantization (eager mode) is deprecated in favour of torchao, and still works on torch "
                 f"{torch.__version__}"),
    }
    update_derived(child, report=report)
    finish_child(child, trainer, cpu_recipe, results, "quantize", params=n_params)
    return child


def load_quantized(path: Path, recipe: Recipe):
    """(int8 model, recipe, trainer) of a quantized run: the recipe's model, quantized the same way,
    filled from checkpoints/quantized.safetensors."""
    from .derived import read_derived

    f = path / "checkpoints" / QUANTIZED
    if not f.is_file():
        raise RunDirError(f"'{path}' is a quantized run without '{f.name}' in checkpoints/; quantize its parent again")
    mode = (read_derived(path) or {}).get("settings", {}).get("mode", "dynamic")
    trainer = make_trainer(recipe, None, callbacks=[])
    skeleton = trainer.model.eval()
    if mode == "static":
        from torch.ao.quantization import convert

        prepared = _static_skeleton(skeleton, recipe.model.name)
        split = trainer.data.train
        with torch.no_grad(), _quiet():
            prepared(next(split.batches(torch.arange(2), 2))[0].cpu())  # any range: the file sets the real ones
            qmodel = convert(prepared)
    else:
        qmodel = quantize_model(skeleton, "dynamic", recipe.model.name)
    try:
        tensors = load_file(str(f))
    except Exception as e:
        raise RunDirError(f"'{f}' is unreadable ({e}); quantize the parent run again") from None
    load_quantized_tensors(qmodel, tensors, str(f))
    trainer.model = trainer.forward_model = qmodel
    return qmodel.eval(), recipe, trainer


def format_report(report: dict) -> str:
    """Size, latency and metrics, fp32 against int8, as `powertrain quantize` prints them."""
    s, lat = report["size_bytes"], report["latency_s_per_sample"]
    m = report["metrics"]
    split = "test" if "test" in m["final"] else "val"  # a text corpus has no test split
    before, after = m["parent"].get(split, {}), m["final"].get(split, {})
    lines = [f"{'':<22} {'fp32':>12} {'int8':>12} {'ratio':>7}",
             f"{'size on disk (bytes)':<22} {s['fp32']:>12,} {s['int8']:>12,} {report['size_ratio']:>6.2f}x",
             f"{'latency / sample (ms)':<22} {lat['fp32'] * 1e3:>12.3f} {lat['int8'] * 1e3:>12.3f} "
             f"{report['latency_ratio']:>6.2f}x"]
    for k in after:
        if k in before:
            lines.append(f"{split + ' ' + k:<22} {before[k]:>12.4f} {after[k]:>12.4f}")
    setup = report["latency_setup"]
    lines.append(f"latency: batch {setup['batch']}, median of {setup['repeats']} after {setup['warmup']} warm-up, "
                 f"{setup['threads']} thread{'s' if setup['threads'] > 1 else ''}; int8 layers: {', '.join(report['quantized_layers'])}")
    return "\n".join(lines)
