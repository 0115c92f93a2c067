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
scales and zero points, the rest as is; int8_io.py), never as a pickle; `load_quantized` rebuilds the model from
the recipe, quantizes its structure the same way and loads those tensors into it, bit for bit.

>>> from powertrain.compress import quantize
>>> child = quantize("runs/mnist1d-gru")                                     # doctest: +SKIP
>>> RunDir(child).read("derived")["report"]["size_ratio"]  # doctest: +SKIP
3.6
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import statistics
import time
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_model
from torch import nn

from ..errors import RecipeError, RunDirError
from ..models import count_params
from ..recipe import Recipe, parse_recipe
from .derived import (child_recipe, create_child, evaluate_splits, finish_child, floats,
                      load_final_weights, make_trainer, open_trained, parent_metrics, update_derived)
from .int8_io import is_quantized_layer, load_quantized_tensors, quiet as _quiet, save_quantized

MODES = ("dynamic", "static")
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
    load_final_weights(parent, trainer.model, trainer.device)
    fp32 = trainer.model.eval()
    qmodel = quantize_model(fp32, mode, recipe.model.name, _calibration(trainer, calibration_samples))
    settings = {"mode": mode, "engine": torch.backends.quantized.engine, "dtype": "qint8",
                "calibration_samples": calibration_samples if mode == "static" else 0}
    child = create_child(parent, cpu_recipe, out, f"int8-{mode}", "quantize", settings)
    int8_bytes = save_quantized(qmodel, child.quantized_weights,
                                {"format": "powertrain-int8", **settings, "model": json.dumps(recipe.model.model_dump())})
    float_bytes = fp32_bytes(fp32, child.checkpoints)
    x1 = _sample(trainer)
    lat = latency_s({"fp32": fp32, "int8": qmodel}, x1, warmup, repeats, threads)
    from ..measure import forward_flops

    trainer.forward_flops_per_sample = forward_flops(fp32, x1).total  # int8 does the same multiply-adds
    n_params = count_params(fp32)
    trainer.model = trainer.forward_model = qmodel
    results = evaluate_splits(trainer)
    quantized = [f"{n} ({type(m).__name__})" for n, m in qmodel.named_modules() if is_quantized_layer(m)]
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
    finish_child(child, trainer, results, "quantize", params=n_params)
    return child.path


def load_quantized(run, recipe: Recipe):
    """(int8 model, recipe, trainer) of a quantized run: the recipe's model, quantized the same way,
    filled from checkpoints/quantized.safetensors."""
    f = run.quantized_weights
    if not f.is_file():
        raise RunDirError(f"'{run.path}' is a quantized run without '{f.name}' in checkpoints/; quantize its parent again")
    mode = (run.read("derived", required=False) or {}).get("settings", {}).get("mode", "dynamic")
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
