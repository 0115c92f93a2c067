"""Post-training int8 quantization of a trained run into a derived run, with size, latency (batch 1 and
64), energy per inference sample and accuracy before and after.

- `ao-weight`, `ao-dynamic`: torchao (the maintained path) on the Linear layers: int8 weights only, or
  int8 weights and activations quantized on the fly (ao.py).

- `dynamic`: the weights of every Linear, LSTM and GRU become int8 (per tensor, symmetric); activations
  are quantized on the fly, batch by batch. Works for any model with such layers (MLP, RNN, the
  transformers' Linears); convolutions stay fp32.
- `static`: weights and activations int8, activation ranges calibrated on training samples. Eager-mode
  static quantization needs to know where the model starts and ends and which layers to fuse: it is
  offered for the `cnn` and `mlp` models (a plain nn.Sequential: Conv/Linear [+ BatchNorm] [+ ReLU]
  fused), and refused, naming the model, for the others.

`dynamic` and `static` use the eager `torch.ao.quantization` on the CPU backend
`torch.backends.quantized.engine` (x86 here: FBGEMM + oneDNN). torch marks that package deprecated in
favour of torchao, whose CPU int8 covers Linear layers only: the eager modes stay for LSTM/GRU and for
int8 convolutions.

The int8 model is saved as safetensors (`checkpoints/quantized.safetensors`: int8 weights with their
scales and zero points, the rest as is; models/int8/), never as a pickle; `train.load.load_model` rebuilds the model
from the recipe, quantizes its structure the same way and loads those tensors into it, bit for bit.

>>> from powertrain.shrink import quantize
>>> child = quantize("runs/mnist1d-gru")                                     # doctest: +SKIP
>>> RunDir(child).read("derived")["report"]["size_ratio"]  # doctest: +SKIP
3.6
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import RecipeError
from ..models import count_params
from ..recipe import Recipe, parse_recipe
from .derived import (child_recipe, create_child, evaluate_splits, finish_child, floats, load_final_weights,
                      make_trainer, open_trained, parent_metrics, update_derived)
from ..models.int8 import AO_MODES, MODES, quantize_model
from ..models.int8.ao import ao_layers, ao_tensors
from .infer_cost import fp32_bytes, inference_cost, slower
from ..models.int8.io import is_quantized_layer, save_quantized

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


def _save(qmodel: nn.Module, mode: str, child, settings: dict, model_spec: dict) -> int:
    meta = {"format": "powertrain-int8", **settings, "model": json.dumps(model_spec)}
    if mode not in AO_MODES:
        return save_quantized(qmodel, child.quantized_weights, meta)
    path = child.quantized_weights
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(ao_tensors(qmodel), str(tmp), metadata={k: str(v) for k, v in meta.items()})
    tmp.replace(path)
    return path.stat().st_size


def quantize(run_dir: str | Path, mode: str = "dynamic", out: Optional[str | Path] = None,
             calibration_samples: int = 512, repeats: int = 200, warmup: int = 20, threads: int = 1,
             checkpoint: Optional[str] = None) -> Path:
    """Quantize a trained (or pruned) run to int8 and write a derived run directory; returns its path.
    derived.json's report: size on disk, CPU latency (batch 1 and 64, median of `repeats` after
    `warmup`, on `threads` threads), J per inference sample and metrics, fp32 against int8, which
    layers became int8, and the batch sizes at which int8 is slower (`slower`).

    >>> child = quantize("runs/digits-mlp", mode="ao-dynamic")  # doctest: +SKIP
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
    used = load_final_weights(parent, trainer.model, trainer.device, checkpoint)  # `checkpoint`: instead of the final
    fp32 = trainer.model.eval()
    qmodel = quantize_model(fp32, mode, recipe.model.name, _calibration(trainer, calibration_samples))
    ao = mode in AO_MODES
    settings = {"mode": mode, "library": "torchao" if ao else "torch.ao.quantization (eager)",
                "engine": "torchao" if ao else torch.backends.quantized.engine, "dtype": "int8" if ao else "qint8",
                "calibration_samples": calibration_samples if mode == "static" else 0, "parent_weights": used}
    child = create_child(parent, cpu_recipe, out, f"int8-{mode}", "quantize", settings)
    int8_bytes = _save(qmodel, mode, child, settings, recipe.model.model_dump())
    float_bytes = fp32_bytes(fp32, child.checkpoints)
    x1 = _sample(trainer)
    cost = inference_cost({"fp32": fp32, "int8": qmodel}, x1, repeats, warmup, threads)
    lat = {k: c["latency_s"]["1"] for k, c in cost.items()}
    from ..measure import forward_flops

    trainer.forward_flops_per_sample = forward_flops(fp32, x1).total  # int8 does the same multiply-adds
    n_params = count_params(fp32)
    trainer.model = trainer.forward_model = qmodel
    results = evaluate_splits(trainer)
    quantized = ao_layers(qmodel) if ao else [f"{n} ({type(m).__name__})" for n, m in qmodel.named_modules()
                                              if is_quantized_layer(m)]
    report = {
        "size_bytes": {"fp32": float_bytes, "int8": int8_bytes}, "size_ratio": float_bytes / int8_bytes,
        "latency_s_per_sample": lat, "latency_ratio": lat["fp32"] / lat["int8"],
        "inference": cost, "slower": slower(cost, "fp32", "int8"),
        "latency_setup": {"batches": [1, 64], "warmup": warmup, "repeats": repeats, "statistic": "median",
                          "threads": threads, "device": "cpu", "interleaved_blocks": min(10, repeats)},
        "metrics": {"parent": parent_metrics(parent), "final": {k: floats(v) for k, v in results.items()}},
        "quantized_layers": quantized, "params": n_params,
        "note": (f"torchao {_ao_version()} on the Linear layers" if ao else
                 "torch.ao.quantization (eager mode) is deprecated in favour of torchao, and still works on torch "
                 f"{torch.__version__}"),
    }
    update_derived(child, report=report)
    finish_child(child, trainer, results, "quantize", params=n_params)
    return child.path


def _ao_version() -> str:
    from importlib.metadata import version

    return version("torchao")


def format_report(report: dict) -> str:
    """Size, latency at batch 1 and 64, energy and metrics, fp32 against int8, as `powertrain quantize`
    prints them; a line in capitals when int8 is slower on this CPU."""
    s, cost = report["size_bytes"], report.get("inference")
    m = report["metrics"]
    split = "test" if "test" in m["final"] else "val"  # a text corpus has no test split
    before, after = m["parent"].get(split, {}), m["final"].get(split, {})
    lines = [f"{'':<24} {'fp32':>12} {'int8':>12} {'ratio':>7}",
             f"{'size on disk (bytes)':<24} {s['fp32']:>12,} {s['int8']:>12,} {report['size_ratio']:>6.2f}x"]
    if cost:
        for b in cost["fp32"]["latency_s"]:
            a, q = cost["fp32"]["latency_s"][b], cost["int8"]["latency_s"][b]
            lines.append(f"{f'latency batch {b} (ms)':<24} {a * 1e3:>12.3f} {q * 1e3:>12.3f} {a / q:>6.2f}x")
        a, q = cost["fp32"]["j_per_sample"], cost["int8"]["j_per_sample"]
        if a and q:
            lines.append(f"{'J / inference sample':<24} {a:>12.3g} {q:>12.3g} {a / q:>6.2f}x  [{cost['int8']['energy_method']}]")
    else:  # a run quantized before batch 64 was measured
        lat = report["latency_s_per_sample"]
        lines.append(f"{'latency / sample (ms)':<24} {lat['fp32'] * 1e3:>12.3f} {lat['int8'] * 1e3:>12.3f} "
                     f"{report['latency_ratio']:>6.2f}x")
    for k in after:
        if k in before:
            lines.append(f"{split + ' ' + k:<24} {before[k]:>12.4f} {after[k]:>12.4f}")
    setup = report["latency_setup"]
    lines.append(f"latency: median of {setup['repeats']} after {setup['warmup']} warm-up, {setup['threads']} "
                 f"thread{'s' if setup['threads'] > 1 else ''}; int8 layers: {', '.join(report['quantized_layers'])}")
    if report.get("slower"):
        lines.append("INT8 IS SLOWER than fp32 on this CPU for this model at " + "; ".join(report["slower"]))
    return "\n".join(lines)
