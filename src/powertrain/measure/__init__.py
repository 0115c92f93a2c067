"""Measurement primitives behind the bill: FLOPs, peak FLOP/s and MFU, energy (measured where a
counter exists, labelled estimated where not), CO2e, peak memory, and the Meter's windows.

>>> from powertrain.measure import Meter, EstimateBackend
>>> with Meter([EstimateBackend(w_per_core=4.0)]).window("fit") as out:
...     pass
>>> out["window"].energy_method
'mixed: estimated:cpu-tdp-per-core + estimated:dram-w-per-gb'
"""
from .carbon import REGIONS, CarbonModel, GridIntensity, grid_intensity
from .energy import CPU_TDP, EnergyBackend, EnergyReading, EnergyTotal, EstimateBackend, NvmlBackend, RaplBackend, above_idle, combine_methods, cpu_w_per_core, detect_backends, measure_idle_power, sum_energy
from .flops import FlopCache, FlopCount, attention_flops, count_flops, forward_flops, shape_key, train_step_flops
from .memory import PeakMemory, peak_memory, reset_peak_memory
from .meter import ComponentTotal, Meter, Window, WindowTotals
from .peak import GPU_PEAKS, Peak, cache_dir, cpu_peak, lookup_peak, measure_cpu_peak, mfu, peak_for

__all__ = [
    # flops
    "FlopCache", "FlopCount", "attention_flops", "count_flops", "forward_flops", "shape_key", "train_step_flops",
    # peak / mfu
    "GPU_PEAKS", "Peak", "cache_dir", "cpu_peak", "lookup_peak", "measure_cpu_peak", "mfu", "peak_for",
    # energy
    "CPU_TDP", "EnergyBackend", "EnergyReading", "EnergyTotal", "EstimateBackend", "NvmlBackend", "RaplBackend",
    "above_idle", "combine_methods", "cpu_w_per_core", "detect_backends", "measure_idle_power", "sum_energy",
    # carbon
    "REGIONS", "CarbonModel", "GridIntensity", "grid_intensity",
    # memory
    "PeakMemory", "peak_memory", "reset_peak_memory",
    # meter
    "ComponentTotal", "Meter", "Window", "WindowTotals",
]
