"""The energy-backend interface, a reading, and a sum that never hides a mix of methods.

A backend turns its counters into one monotone cumulative energy per component (in J), so a
window is two snapshots and a subtraction; wraparound and sampling live inside the backend.

>>> a = EnergyReading("cpu:package-0", 10.0, "measured:rapl")
>>> b = EnergyReading("dram", 2.5, "estimated:dram-w-per-gb")
>>> total = sum_energy([a, b])
>>> total.energy_j, total.method
(12.5, 'mixed: measured:rapl + estimated:dram-w-per-gb')
"""
from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

__all__ = ["EnergyReading", "EnergyTotal", "EnergyBackend", "sum_energy", "combine_methods", "Snapshot"]

#: component -> cumulative energy in J since the backend started
Snapshot = Mapping[str, float]


@dataclass(frozen=True)
class EnergyReading:
    """Energy of one component over one window, and how it was obtained.

    method: "measured:nvml", "measured:nvml-power-sampled", "measured:rapl", or "estimated:<model>".
    above_idle_j: energy minus idle power x time, when an idle baseline was measured.
    flags: caveats about this reading (e.g. a window shorter than the counter's update period).
    """

    component: str
    energy_j: float
    method: str
    flags: tuple[str, ...] = ()
    above_idle_j: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flags"] = list(self.flags)
        return d


def combine_methods(methods: Iterable[str]) -> str:
    """One label for a sum: the method itself if all agree, else 'mixed: a + b' (measured first).

    >>> combine_methods(["measured:nvml", "measured:nvml"])
    'measured:nvml'
    >>> combine_methods(["estimated:cpu-tdp-per-core", "measured:nvml"])
    'mixed: measured:nvml + estimated:cpu-tdp-per-core'
    """
    return _combine(tuple(methods))


@functools.lru_cache(maxsize=256)  # a window's end calls this with the same few labels every time
def _combine(methods: tuple[str, ...]) -> str:
    parts: set[str] = set()
    for m in methods:
        parts.update(p.strip() for p in (m[len("mixed:"):].split("+") if m.startswith("mixed:") else [m]))
    if not parts:
        return "none"
    ordered = sorted(parts, key=lambda m: (not m.startswith("measured:"), m))
    return ordered[0] if len(ordered) == 1 else "mixed: " + " + ".join(ordered)


@dataclass(frozen=True)
class EnergyTotal:
    energy_j: float
    method: str
    above_idle_j: float | None = None


def sum_energy(readings: Iterable[EnergyReading]) -> EnergyTotal:
    """Sum component readings; the method says 'mixed: ...' whenever methods differ."""
    readings = list(readings)
    above = [r.above_idle_j for r in readings]
    return EnergyTotal(
        energy_j=sum(r.energy_j for r in readings),
        method=combine_methods(r.method for r in readings),
        above_idle_j=sum(above) if readings and all(a is not None for a in above) else None,  # type: ignore[arg-type]
    )


class EnergyBackend(ABC):
    """A source of cumulative energy per component (Zeus-style: read twice, subtract).

    Subclasses set `name`, fill `methods` (component -> method label) and `update_period_s`
    (component -> how often the underlying counter updates), and implement `snapshot()`.
    `available` is False (with `note` saying why and how to fix it) when nothing is readable.
    """

    name: str = "backend"

    def __init__(self) -> None:
        self.methods: dict[str, str] = {}
        self.update_period_s: dict[str, float] = {}
        self.note: str | None = None

    @property
    def available(self) -> bool:
        return bool(self.methods)

    @abstractmethod
    def snapshot(self) -> dict[str, float]:
        """Cumulative energy in J per component, monotone (wraparound already undone)."""

    def readings(self, begin: Snapshot, end: Snapshot, time_s: float) -> list[EnergyReading]:
        """Readings for a window between two snapshots of this backend, `time_s` long."""
        out = []
        for comp, method in self.methods.items():
            if comp not in begin or comp not in end:
                continue
            flags = []
            period = self.update_period_s.get(comp, 0.0)
            if time_s < period:
                flags.append(f"window {time_s * 1e3:.1f} ms is shorter than the {method} update period "
                             f"(~{period * 1e3:.0f} ms): the reading may be 0 or one update off")
            out.append(EnergyReading(comp, end[comp] - begin[comp], method, tuple(flags)))
        return out

    def close(self) -> None:
        """Stop background threads, release handles. Safe to call twice."""
