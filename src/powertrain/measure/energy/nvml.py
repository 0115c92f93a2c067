"""NVIDIA GPU energy through NVML (the `pynvml` module of `nvidia-ml-py`, imported lazily).

Per visible GPU (CUDA_VISIBLE_DEVICES respected; ordinals as torch numbers them):
  - `nvmlDeviceGetTotalEnergyConsumption`: mJ since the driver loaded (Volta and newer), a
    64-bit counter read as differences: 'measured:nvml'. It updates about every 100 ms, so
    shorter windows are flagged.
  - where that raises NVMLError_NotSupported, `nvmlDeviceGetPowerUsage` (mW) is sampled by a
    daemon thread every `sample_s` and integrated with the trapezoid rule:
    'measured:nvml-power-sampled'. NVML documents that on Ampere (except GA100) and newer this
    value is a 1-second average, so the integral lags fast changes.

>>> class FakeNvml:                       # a pynvml-like object; see tests/measure for more
...     class NVMLError(Exception): pass
...     mj = 5_000
...     def nvmlInit(self): pass
...     def nvmlDeviceGetCount(self): return 1
...     def nvmlDeviceGetHandleByIndex(self, i): return i
...     def nvmlDeviceGetTotalEnergyConsumption(self, h): return self.mj
>>> fake = FakeNvml()
>>> gpu = NvmlBackend(nvml=fake, gpus=[0])
>>> before = gpu.snapshot(); fake.mj += 1_500
>>> [(r.component, r.energy_j, r.method) for r in gpu.readings(before, gpu.snapshot(), time_s=1.0)]
[('gpu:0', 1.5, 'measured:nvml')]
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

from .base import EnergyBackend

__all__ = ["NvmlBackend", "PowerIntegrator"]

NVML_ENERGY_UPDATE_PERIOD_S = 0.1


class PowerIntegrator:
    """Cumulative energy from power samples (trapezoid rule). `sample()` reads power once.

    >>> watts = iter([100.0, 200.0, 200.0]); t = iter([0.0, 1.0, 2.0])
    >>> p = PowerIntegrator(lambda: next(watts), clock=lambda: next(t))
    >>> p.sample(); p.sample(); p.sample()
    0.0
    150.0
    350.0
    """

    def __init__(self, read_power_w: Callable[[], float], clock: Callable[[], float] = time.monotonic):
        self.read_power_w = read_power_w
        self.clock = clock
        self.energy_j = 0.0
        self._last: tuple[float, float] | None = None
        self._lock = threading.Lock()

    def sample(self) -> float:
        with self._lock:
            t, p = self.clock(), float(self.read_power_w())
            if self._last is not None:
                t0, p0 = self._last
                self.energy_j += (p0 + p) / 2 * (t - t0)
            self._last = (t, p)
            return self.energy_j


def _visible_indices(nvml: Any) -> list[int]:
    """NVML indices of the GPUs CUDA can see, in CUDA's order (from CUDA_VISIBLE_DEVICES).

    Unset: all GPUs. Integers or GPU-/MIG- UUID prefixes, comma-separated; like CUDA, the list
    stops at the first entry that names no GPU, and "" means none.
    """
    count = nvml.nvmlDeviceGetCount()
    spec = os.environ.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return list(range(count))
    out: list[int] = []
    for item in (s.strip() for s in spec.split(",")):
        if item.isdigit() and int(item) < count:
            out.append(int(item))
            continue
        match = None
        if item.startswith(("GPU-", "MIG-")):
            for i in range(count):
                uuid = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))
                if (uuid.decode() if isinstance(uuid, bytes) else uuid).startswith(item):
                    match = i
                    break
        if match is None:
            break
        out.append(match)
    return out


class NvmlBackend(EnergyBackend):
    """GPU energy per visible GPU: component 'gpu:<cuda ordinal>'.

    nvml: a pynvml-like module (default: `import pynvml`, lazily). gpus: NVML indices to read
    (default: those CUDA_VISIBLE_DEVICES leaves visible). sample_s: the power-sampling interval
    for GPUs without an energy counter (None: no thread, sample only at snapshots - for tests).
    clock: the time source of the power integration.
    """

    name = "nvml"

    def __init__(self, nvml: Any = None, gpus: list[int] | None = None, sample_s: float | None = 0.1,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self._counters: dict[str, Any] = {}               # component -> handle (energy counter)
        self._integrators: dict[str, PowerIntegrator] = {}  # component -> power integrator
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if nvml is None:
            try:
                import pynvml as nvml  # type: ignore[no-redef]
            except ImportError:
                self.note = "NVML: nvidia-ml-py is not installed (pip install nvidia-ml-py); no GPU energy"
                return
        self.nvml = nvml
        error = getattr(nvml, "NVMLError", Exception)
        try:
            nvml.nvmlInit()
            self._initialised = True
            indices = list(gpus) if gpus is not None else _visible_indices(nvml)
        except error as e:
            self.note = f"NVML: cannot initialise ({e}); no GPU energy (is the NVIDIA driver loaded?)"
            return
        notes = []
        for ordinal, index in enumerate(indices):
            comp = f"gpu:{ordinal}"
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except error as e:
                notes.append(f"NVML: GPU {index}: {e}")
                continue
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                self._counters[comp] = handle
                self.methods[comp] = "measured:nvml"
                self.update_period_s[comp] = NVML_ENERGY_UPDATE_PERIOD_S
                continue
            except error as e:
                if not self._not_supported(e):
                    notes.append(f"NVML: GPU {index}: energy counter failed ({e})")
                    continue
            try:
                nvml.nvmlDeviceGetPowerUsage(handle)
            except error as e:
                notes.append(f"NVML: GPU {index}: neither energy counter nor power reading ({e})")
                continue
            self._integrators[comp] = PowerIntegrator(
                lambda h=handle: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0, clock)
            self._integrators[comp].sample()
            self.methods[comp] = "measured:nvml-power-sampled"
            self.update_period_s[comp] = max(sample_s or 0.0, NVML_ENERGY_UPDATE_PERIOD_S)
            notes.append(f"NVML: GPU {index} has no energy counter; power sampled every {sample_s} s")
        if not self.methods and not notes:
            notes.append("NVML: no visible GPU")
        self.note = "; ".join(notes) or None
        if self._integrators and sample_s:
            self._thread = threading.Thread(target=self._sample_loop, args=(sample_s,), daemon=True,
                                            name="powertrain-nvml-power")
            self._thread.start()

    def _not_supported(self, e: BaseException) -> bool:
        cls = getattr(self.nvml, "NVMLError_NotSupported", None)
        if cls is not None and isinstance(e, cls):
            return True
        code = getattr(self.nvml, "NVML_ERROR_NOT_SUPPORTED", 3)
        return getattr(e, "value", None) == code

    def snapshot(self) -> dict[str, float]:
        snap = {c: self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0 for c, h in self._counters.items()}
        snap.update({c: p.sample() for c, p in self._integrators.items()})
        return snap

    def _sample_loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            for p in self._integrators.values():
                try:
                    p.sample()
                except Exception:  # a lost GPU must not kill training; the window's reading stops growing
                    return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        if getattr(self, "_initialised", False):
            self._initialised = False
            try:
                getattr(self.nvml, "nvmlShutdown", lambda: None)()  # NVML reference-counts init/shutdown
            except Exception:
                pass
