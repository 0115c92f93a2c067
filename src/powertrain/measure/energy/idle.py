"""An optional idle baseline: measure each component's power while this process sleeps, then
report, beside a window's energy, the part above idle (energy_j - idle_w x time_s).

Meaningful for counters that see the whole device (RAPL, NVML). The process-attributed
estimate is ~0 W at idle by construction (a sleeping process uses no CPU-seconds), so its
'above idle' equals its energy, less the DRAM term of its resident memory.

>>> from powertrain.measure.energy.base import EnergyReading
>>> above_idle([EnergyReading("gpu:0", 500.0, "measured:nvml")], {"gpu:0": 60.0}, time_s=5.0)[0].above_idle_j
200.0
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Mapping, Sequence

from .base import EnergyBackend, EnergyReading

__all__ = ["measure_idle_power", "above_idle"]


def measure_idle_power(backends: Sequence[EnergyBackend], duration_s: float = 3.0,
                       sleep: Callable[[float], None] = time.sleep,
                       clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Mean power (W) per component over `duration_s` of sleeping. Blocks for duration_s."""
    t0, begin = clock(), [b.snapshot() for b in backends]
    sleep(duration_s)
    end, t1 = [b.snapshot() for b in backends], clock()
    elapsed = t1 - t0
    if elapsed <= 0:
        raise ValueError("measure_idle_power: the clock did not advance")
    return {r.component: r.energy_j / elapsed
            for b, s0, s1 in zip(backends, begin, end) for r in b.readings(s0, s1, elapsed)}


def above_idle(readings: Sequence[EnergyReading], idle_power_w: Mapping[str, float],
               time_s: float) -> list[EnergyReading]:
    """Readings with `above_idle_j` filled for components that have an idle baseline."""
    return [dataclasses.replace(r, above_idle_j=r.energy_j - idle_power_w[r.component] * time_s)
            if r.component in idle_power_w else r for r in readings]
