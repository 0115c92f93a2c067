"""An explicit energy *estimate* where no counter is readable (as on a VM or a laptop without
root). Every reading is labelled 'estimated:<model>'. See docs/measure.md for why it may be wrong.

Models:
  - 'estimated:cpu-tdp-per-core': this process's CPU-seconds (user + system, of itself and of
    its reaped children) x W per core, W per core = the chip's TDP / its physical cores, from
    a setting, else the `CPU_TDP` table (matched on the /proc/cpuinfo model name), else the
    median of the table's server chips (the note says so).
  - 'estimated:dram-w-per-gb': this process's resident memory (GB) x W per GB x wall time,
    integrated between snapshots. 0.375 W/GB is Crucial's "3 W per 8 GB of DDR3/DDR4", the
    figure CodeCarbon used before its 3.0.

>>> cpu_s = iter([10.0, 12.0]); rss = iter([2e9, 2e9]); t = iter([0.0, 4.0])
>>> est = EstimateBackend(w_per_core=5.0, cpu_seconds=lambda: next(cpu_s),
...                       rss_bytes=lambda: next(rss), clock=lambda: next(t))
>>> a = est.snapshot(); b = est.snapshot()
>>> [(r.component, r.energy_j, r.method) for r in est.readings(a, b, time_s=4.0)]
[('cpu', 10.0, 'estimated:cpu-tdp-per-core'), ('dram', 3.0, 'estimated:dram-w-per-gb')]
"""
from __future__ import annotations

import os
import re
import resource
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .base import EnergyBackend

__all__ = ["EstimateBackend", "CpuTdp", "CPU_TDP", "cpu_w_per_core", "DRAM_W_PER_GB",
           "process_cpu_seconds", "process_rss_bytes"]

DRAM_W_PER_GB = 3.0 / 8.0
DRAM_SOURCE = "Crucial 'How much power does memory use?': 3 W per 8 GB DDR3/DDR4 (CodeCarbon < 3.0)"
CPU_TIME_RESOLUTION_S = 0.01  # kernel CPU-time accounting can be tick-based (1/HZ, HZ >= 100)


@dataclass(frozen=True)
class CpuTdp:
    pattern: str   # regex over the lower-cased model name
    model: str
    tdp_w: float
    cores: int
    server: bool
    source: str

    @property
    def w_per_core(self) -> float:
        return self.tdp_w / self.cores


_AMD, _INTEL = "AMD product page (amd.com)", "Intel ARK (ark.intel.com)"
CPU_TDP: tuple[CpuTdp, ...] = (
    CpuTdp(r"epyc 9965", "AMD EPYC 9965", 500, 192, True, _AMD),
    CpuTdp(r"epyc 9654", "AMD EPYC 9654", 360, 96, True, _AMD),
    CpuTdp(r"epyc 7763", "AMD EPYC 7763", 280, 64, True, _AMD),
    CpuTdp(r"epyc 7742", "AMD EPYC 7742", 225, 64, True, _AMD),
    CpuTdp(r"xeon.*8480\+", "Intel Xeon Platinum 8480+", 350, 56, True, _INTEL),
    CpuTdp(r"xeon.*8380", "Intel Xeon Platinum 8380", 270, 40, True, _INTEL),
    CpuTdp(r"xeon.*8358", "Intel Xeon Platinum 8358", 250, 32, True, _INTEL),
    CpuTdp(r"ryzen 9 7950x\b", "AMD Ryzen 9 7950X", 170, 16, False, _AMD),
    CpuTdp(r"i9-13900k\b", "Intel Core i9-13900K (processor base power)", 125, 24, False, _INTEL),
)


def cpu_w_per_core(model_name: str | None = None, setting: float | None = None) -> tuple[float, str]:
    """(W per core, where it came from) for the estimate. A setting wins, then the table.

    With CodeCarbon installed its TDP table comes first (measure/tables.py), our `CPU_TDP` after; the
    core count comes from the model name ("64-Core") or our table.

    >>> cpu_w_per_core("AMD EPYC 7763 64-Core Processor")[0]
    4.375
    """
    if setting is not None:
        return float(setting), f"setting: {setting} W per core"
    from ...settings import cpu_w_per_core as from_env  # checked: a finite number > 0

    env = from_env()
    if env is not None:
        return env, f"POWERTRAIN_CPU_W_PER_CORE={env:g}"
    if model_name is None:
        from ..peak import cpu_model_name
        model_name = cpu_model_name()
    name = model_name.lower()
    ours = next((row for row in CPU_TDP if re.search(row.pattern, name)), None)
    from ..tables import cpu_tdp

    theirs = cpu_tdp(model_name)
    counted = re.search(r"\b(\d+)-core\b", name)
    cores, cores_from = ((int(counted.group(1)), "from the model name") if counted else
                         (ours.cores, ours.source) if ours else (None, None))
    if theirs is not None and cores:
        chip, tdp, source = theirs
        return tdp / cores, f"{chip}: {tdp:g} W TDP ({source}) / {cores} cores ({cores_from})"
    if ours is not None:
        return ours.w_per_core, f"{ours.model}: {ours.tdp_w:g} W TDP / {ours.cores} cores ({ours.source})"
    median = statistics.median(r.w_per_core for r in CPU_TDP if r.server)
    return median, (f"'{model_name}' is not in the TDP table: median of its server chips, {median:.3f} W per "
                    f"core (set POWERTRAIN_CPU_W_PER_CORE to override)")


def process_cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (all threads)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


_statm: tuple[int, int] | None = None  # (pid, fd): /proc/self/statm kept open, reopened after fork


def process_rss_bytes() -> int:
    """Resident memory of this process now (/proc/self/statm, ~2 us), else its peak (ru_maxrss)."""
    global _statm
    try:
        if _statm is None or _statm[0] != os.getpid():
            _statm = (os.getpid(), os.open("/proc/self/statm", os.O_RDONLY))
        return int(os.pread(_statm[1], 128, 0).split()[1]) * _PAGE
    except (OSError, AttributeError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024


class EstimateBackend(EnergyBackend):
    """CPU (and DRAM) energy from an explicit model; components 'cpu' and 'dram'.

    w_per_core: W per busy core (default: `cpu_w_per_core()`); dram_w_per_gb: W per GB resident.
    cpu/dram: which components to estimate (e.g. dram only when RAPL measures the package).
    cpu_seconds, rss_bytes, clock: sources, injectable for tests. A snapshot costs a
    getrusage() and a read of /proc/self/statm: microseconds, no threads, no subprocesses.
    """

    name = "estimate"

    def __init__(self, w_per_core: float | None = None, dram_w_per_gb: float = DRAM_W_PER_GB,
                 cpu: bool = True, dram: bool = True, cpu_model: str | None = None,
                 cpu_seconds: Callable[[], float] = process_cpu_seconds,
                 rss_bytes: Callable[[], int] = process_rss_bytes,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.w_per_core, self.cpu_source = cpu_w_per_core(cpu_model, w_per_core)
        self.dram_w_per_gb = dram_w_per_gb
        self._cpu_seconds, self._rss_bytes, self._clock = cpu_seconds, rss_bytes, clock
        self._lock = threading.Lock()
        self._dram_j = 0.0
        self._last: tuple[float, float] | None = None  # (time, rss GB) at the last snapshot
        if cpu:
            self.methods["cpu"] = "estimated:cpu-tdp-per-core"
            self.update_period_s["cpu"] = CPU_TIME_RESOLUTION_S
        if dram:
            self.methods["dram"] = "estimated:dram-w-per-gb"
        self.note = "; ".join(filter(None, [
            f"CPU energy estimated: process CPU-seconds x {self.w_per_core:.3f} W/core ({self.cpu_source})" if cpu else "",
            f"DRAM energy estimated: resident GB x {dram_w_per_gb:.3f} W/GB x time ({DRAM_SOURCE})" if dram else "",
        ]))

    def snapshot(self) -> dict[str, float]:
        snap = {}
        if "cpu" in self.methods:
            snap["cpu"] = self._cpu_seconds() * self.w_per_core
        if "dram" in self.methods:
            with self._lock:
                t, gb = self._clock(), self._rss_bytes() / 1e9
                if self._last is not None:
                    t0, gb0 = self._last
                    self._dram_j += (gb0 + gb) / 2 * self.dram_w_per_gb * (t - t0)
                self._last = (t, gb)
                snap["dram"] = self._dram_j
        return snap
