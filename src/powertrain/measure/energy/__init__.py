"""Energy backends behind one interface (after Zeus): NVML for NVIDIA GPUs, RAPL for the CPU
package and DRAM, and a labelled estimate where no counter is readable.

>>> backends, notes = detect_backends(rapl_root="/nonexistent", nvml=False)
>>> [b.name for b in backends]
['estimate']
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import EnergyBackend, EnergyReading, EnergyTotal, Snapshot, combine_methods, sum_energy
from .estimate import CPU_TDP, DRAM_W_PER_GB, CpuTdp, EstimateBackend, cpu_w_per_core
from .idle import above_idle, measure_idle_power
from .nvml import NvmlBackend, PowerIntegrator
from .rapl import DEFAULT_POWERCAP_ROOT, RaplBackend

__all__ = ["EnergyBackend", "EnergyReading", "EnergyTotal", "Snapshot", "combine_methods", "sum_energy",
           "EstimateBackend", "CpuTdp", "CPU_TDP", "DRAM_W_PER_GB", "cpu_w_per_core", "NvmlBackend",
           "PowerIntegrator", "RaplBackend", "DEFAULT_POWERCAP_ROOT", "detect_backends", "above_idle",
           "measure_idle_power"]


def detect_backends(rapl_root: str | Path = DEFAULT_POWERCAP_ROOT, nvml: Any = None,
                    w_per_core: float | None = None) -> tuple[list[EnergyBackend], list[str]]:
    """The backends that can be read here, and notes on those that cannot (with the fix).

    GPUs: NVML if it initialises (nvml=False skips it; a module object is used as pynvml).
    CPU package and DRAM: RAPL if readable; whatever RAPL does not cover is estimated, so the
    CPU side always has a figure, labelled with how it was obtained.
    """
    backends: list[EnergyBackend] = []
    notes: list[str] = []
    if nvml is not False:
        gpu = NvmlBackend(nvml=nvml)
        (backends.append(gpu) if gpu.available else gpu.close())
        if gpu.note and (gpu.available or _cuda_visible()):
            notes.append(gpu.note)
    rapl = RaplBackend(rapl_root)
    if rapl.available:
        backends.append(rapl)
    else:
        rapl.close()
        if rapl.note:
            notes.append(rapl.note)
    has_cpu = any(c.startswith("cpu") for b in backends for c in b.methods)
    has_dram = any(c.startswith("dram") for b in backends for c in b.methods)
    if not (has_cpu and has_dram):
        est = EstimateBackend(w_per_core=w_per_core, cpu=not has_cpu, dram=not has_dram)
        backends.append(est)
        notes.append(est.note or "")
    return backends, [n for n in notes if n]


def _cuda_visible() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False
