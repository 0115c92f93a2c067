"""Meter: named, nestable measurement windows (time, FLOPs, energy per component, CO2e).

`begin(name)` ... `end(name)` returns a plain `Window`; totals accumulate per name and go into
a checkpoint through `state_dict()` so a resumed run's bill covers the whole run. CUDA is
synchronised at both edges of a window when CUDA is in use, so queued kernels are counted in
the window that launched them.

>>> from powertrain.measure.energy import EstimateBackend
>>> meter = Meter([EstimateBackend(w_per_core=5.0)])
>>> meter.begin("train")
>>> meter.add_flops(1_000)
>>> w = meter.end("train")
>>> w.name, w.flops, [r.method for r in w.energy]
('train', 1000, ['estimated:cpu-tdp-per-core', 'estimated:dram-w-per-gb'])
>>> meter.totals()["train"].count
1
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from .carbon import CarbonModel
from .energy import EnergyBackend, EnergyReading, above_idle, combine_methods, detect_backends, measure_idle_power, sum_energy

_CUDA_BUILD = torch.backends.cuda.is_built()  # a CPU build never initialises CUDA: skip the 4 us check

__all__ = ["Meter", "Window", "WindowTotals", "ComponentTotal"]


@dataclass(frozen=True)
class Window:
    """One closed window. energy_j/energy_method sum the components ('mixed: ...' if they differ)."""

    name: str
    time_s: float
    flops: int | None
    energy: tuple[EnergyReading, ...]
    energy_j: float
    energy_method: str
    above_idle_j: float | None
    co2e_g: float | None
    flags: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["energy"] = [r.to_dict() for r in self.energy]
        d["flags"] = list(self.flags)
        return d


@dataclass
class ComponentTotal:
    energy_j: float = 0.0
    method: str = ""
    above_idle_j: float | None = None


@dataclass
class WindowTotals:
    """Everything the windows of one name added up to (over resumes too, via state_dict)."""

    name: str
    count: int = 0
    time_s: float = 0.0
    flops: int | None = None
    energy: dict[str, ComponentTotal] = field(default_factory=dict)
    co2e_g: float | None = None

    @property
    def energy_j(self) -> float:
        return sum(c.energy_j for c in self.energy.values())

    @property
    def energy_method(self) -> str:
        return combine_methods(c.method for c in self.energy.values())

    def add(self, w: Window) -> None:
        self.count += 1
        self.time_s += w.time_s
        if w.flops is not None:
            self.flops = (self.flops or 0) + w.flops
        if w.co2e_g is not None:
            self.co2e_g = (self.co2e_g or 0.0) + w.co2e_g
        for r in w.energy:
            c = self.energy.setdefault(r.component, ComponentTotal(method=r.method))
            c.energy_j += r.energy_j
            if r.method != c.method:
                c.method = combine_methods([c.method, r.method])
            if r.above_idle_j is not None:
                c.above_idle_j = (c.above_idle_j or 0.0) + r.above_idle_j

    def to_dict(self) -> dict:
        return {"name": self.name, "count": self.count, "time_s": self.time_s, "flops": self.flops,
                "energy_j": self.energy_j, "energy_method": self.energy_method, "co2e_g": self.co2e_g,
                "energy": {k: asdict(v) for k, v in self.energy.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "WindowTotals":
        t = cls(d["name"], int(d["count"]), float(d["time_s"]), d["flops"], co2e_g=d["co2e_g"])
        t.energy = {k: ComponentTotal(**v) for k, v in d["energy"].items()}
        return t


@dataclass
class _Open:
    t0: float
    snapshots: list[dict[str, float]]
    flops: int | None = None


@dataclass
class Stopped:
    """A window closed by `Meter.stop` but not yet accounted."""

    name: str
    opened: _Open
    t1: float
    snapshots: list[dict[str, float]]


class Meter:
    """Measurement windows over a set of energy backends.

    backends: default `detect_backends()` (NVML, RAPL, else the labelled estimate); `notes` says
    what could not be read and why. carbon: turns J into g CO2e (default: world-average grid,
    labelled). sync_cuda: None = synchronise when CUDA has been initialised. clock: for tests.
    """

    def __init__(self, backends: Sequence[EnergyBackend] | None = None, carbon: CarbonModel | None = None,
                 sync_cuda: bool | None = None, clock: Callable[[], float] = time.perf_counter):
        self.notes: list[str] = []
        if backends is None:
            backends, self.notes = detect_backends()
        self.backends = list(backends)
        self.carbon = carbon if carbon is not None else CarbonModel()
        self.sync_cuda = sync_cuda
        self.clock = clock
        self.idle_power_w: dict[str, float] = {}
        self._open: dict[str, _Open] = {}
        self._totals: dict[str, WindowTotals] = {}

    # -- windows ---------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.sync_cuda or (self.sync_cuda is None and _CUDA_BUILD and torch.cuda.is_initialized()):
            torch.cuda.synchronize()

    def begin(self, name: str) -> None:
        """Open window `name`. Windows nest; two open windows cannot share a name."""
        if name in self._open:
            raise ValueError(f"Meter.begin: window '{name}' is already open; end it first or use another name")
        self._sync()
        snaps = [b.snapshot() for b in self.backends]
        self._open[name] = _Open(self.clock(), snaps)

    def add_flops(self, n: int) -> None:
        """Add n FLOPs to every open window (an inner 'step' and the outer 'train' alike)."""
        for w in self._open.values():
            w.flops = (w.flops or 0) + int(n)

    def end(self, name: str, flops: int | None = None) -> Window:
        """Close window `name` and return its measurements; `flops` adds to what add_flops gave."""
        return self.account(self.stop(name), flops)

    def stop(self, name: str) -> "Stopped":
        """The first half of `end`: close window `name` by reading the clock and the counters, and
        nothing else. For a hot loop: `account(stopped)` later (before `totals()` is read) does the rest."""
        if name not in self._open:
            open_names = ", ".join(self._open) or "none"
            raise ValueError(f"Meter.end: window '{name}' is not open (open: {open_names})")
        self._sync()
        t1 = self.clock()
        return Stopped(name, self._open.pop(name), t1, [b.snapshot() for b in self.backends])

    def account(self, stopped: "Stopped", flops: int | None = None) -> Window:
        """The second half of `end`: the stopped window's Window, added to the totals."""
        name, w = stopped.name, stopped.opened
        time_s = stopped.t1 - w.t0
        readings: list[EnergyReading] = []
        for backend, s0, s1 in zip(self.backends, w.snapshots, stopped.snapshots):
            readings.extend(backend.readings(s0, s1, time_s))
        if self.idle_power_w:
            readings = above_idle(readings, self.idle_power_w, time_s)
        total = sum_energy(readings)
        total_flops = None if w.flops is None and flops is None else (w.flops or 0) + int(flops or 0)
        window = Window(name, time_s, total_flops, tuple(readings), total.energy_j, total.method,
                        total.above_idle_j, self.carbon.co2e_g(total.energy_j) if readings else None,
                        tuple(f"{r.component}: {f}" for r in readings for f in r.flags))
        self._totals.setdefault(name, WindowTotals(name)).add(window)
        return window

    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[dict]:
        """`with meter.window("eval") as out: ...`; afterwards out["window"] is the Window."""
        out: dict = {}
        self.begin(name)
        try:
            yield out
        finally:
            out["window"] = self.end(name)

    # -- idle baseline, totals, resume ----------------------------------------------------
    def measure_idle(self, duration_s: float = 3.0, sleep: Callable[[float], None] = time.sleep) -> dict[str, float]:
        """Measure idle power per component (sleeps duration_s); later windows report above_idle_j."""
        self.idle_power_w = measure_idle_power(self.backends, duration_s, sleep=sleep, clock=self.clock)
        return dict(self.idle_power_w)

    def totals(self) -> dict[str, WindowTotals]:
        return dict(self._totals)

    def state_dict(self) -> dict:
        """Plain Python types only: loadable with torch.load(weights_only=True)."""
        return {"version": 1, "totals": {k: v.to_dict() for k, v in self._totals.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore totals. The idle baseline is not restored: it belongs to the machine and
        session it was measured on; call measure_idle() again after a resume if wanted."""
        if state.get("version") != 1:
            raise ValueError(f"Meter.load_state_dict: version {state.get('version')!r} is not 1")
        self._totals = {k: WindowTotals.from_dict(v) for k, v in state["totals"].items()}

    def describe(self) -> dict:
        """What a bill should print about how energy was obtained."""
        return {"backends": {b.name: dict(b.methods) for b in self.backends},
                "notes": list(dict.fromkeys(self.notes + [b.note for b in self.backends if b.note])),
                "carbon": self.carbon.to_dict(), "idle_power_w": dict(self.idle_power_w)}

    def close(self) -> None:
        for b in self.backends:
            b.close()
