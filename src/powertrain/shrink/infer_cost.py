"""What a model costs to keep and to run, measured the same way for every shrinking method: bytes on
disk, parameters, forward FLOPs per sample, CPU latency at batch 1 and 64, and energy per inference
sample (a Meter window around the batch-64 passes; on a machine without a counter the figure is the
labelled estimate, and its method travels with it).

The models being compared take turns in blocks, so that a change of load on a shared machine hits
them alike; each figure is the median over its passes.

>>> import torch
>>> m = torch.nn.Linear(8, 2)
>>> cost = inference_cost({"fp32": m}, torch.randn(1, 8), repeats=4, warmup=1)
>>> sorted(cost["fp32"]["latency_s"])
['1', '64']
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_model
from torch import nn

BATCHES = (1, 64)


def fp32_bytes(model: nn.Module, where: Path) -> int:
    """Size on disk of the model's fp32 weights in the checkpoints' format (safetensors)."""
    tmp = Path(where) / f".fp32-size-{os.getpid()}.safetensors"
    try:
        save_model(model, str(tmp))
        return tmp.stat().st_size
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def threads(n: int):
    """torch's intra-op threads set to `n` for the block, put back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def latency_s(models: dict[str, nn.Module], x: torch.Tensor, warmup: int = 20, repeats: int = 200,
              n_threads: int = 1, meter=None) -> dict[str, float]:
    """Median wall time of one forward pass on `x` for each model (CPU, inference mode, `n_threads`
    threads), after `warmup` passes each. The models take turns in 10 blocks. With a `meter`, each
    model's passes are inside windows named `infer-NAME` (their totals: time and energy)."""
    times: dict[str, list[float]] = {k: [] for k in models}
    blocks = min(10, repeats)
    with torch.inference_mode(), threads(n_threads):
        for m in models.values():
            for _ in range(warmup):
                m(x)
        for b in range(blocks):
            for k, m in models.items():
                window = meter.window(f"infer-{k}") if meter is not None else contextlib.nullcontext()
                with window:
                    for _ in range(repeats // blocks + (b < repeats % blocks)):
                        t0 = time.perf_counter()
                        m(x)
                        times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def inference_cost(models: dict[str, nn.Module], sample: torch.Tensor, repeats: int = 200, warmup: int = 20,
                   n_threads: int = 1, batches: tuple[int, ...] = BATCHES) -> dict[str, dict]:
    """{name: {"latency_s": {"1": s, "64": s}, "latency_s_per_sample": {...}, "j_per_sample": J,
    "energy_method": str}} for each model, on `sample` (one input, batch 1) repeated to each batch size,
    `repeats` passes per batch size. Energy per sample: the Meter's energy over the largest batch's
    passes, divided by the samples they held."""
    from ..measure import Meter

    x1 = sample[:1]
    out: dict[str, dict] = {k: {"latency_s": {}, "latency_s_per_sample": {}} for k in models}
    meter: Optional[Meter] = None
    for b in batches:
        x = x1.expand(b, *x1.shape[1:]).contiguous()
        if b == max(batches):
            meter = Meter()
        lat = latency_s(models, x, warmup, repeats, n_threads, meter if b == max(batches) else None)
        for k, s in lat.items():
            out[k]["latency_s"][str(b)] = s
            out[k]["latency_s_per_sample"][str(b)] = s / b
    for k in models:
        total = meter.totals()[f"infer-{k}"] if meter is not None else None
        out[k]["j_per_sample"] = total.energy_j / (repeats * max(batches)) if total and total.energy else None
        out[k]["energy_method"] = total.energy_method if total and total.energy else None
    return out


def slower(cost: dict[str, dict], base: str, other: str) -> list[str]:
    """The batch sizes at which `other` runs slower than `base`, as text: ["batch 1: 2.10x slower"]."""
    lines = []
    for b, t in cost[other]["latency_s"].items():
        ratio = t / cost[base]["latency_s"][b]
        if ratio > 1:
            lines.append(f"batch {b}: {ratio:.2f}x slower")
    return lines
