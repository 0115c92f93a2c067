"""RAPL energy counters through Linux powercap: CPU package and DRAM domains.

Layout (the kernel's `intel_rapl` driver; AMD Zen CPUs appear under the same names):

    /sys/class/powercap/intel-rapl:0/{name=package-0, energy_uj, max_energy_range_uj}
    /sys/class/powercap/intel-rapl:0:1/{name=dram, ...}        (a subzone of package 0)

Only `package-N` and `dram` zones are read: `core`/`uncore` are inside the package and `psys`
contains it, so adding them would double count. `intel-rapl-mmio` zones duplicate the package.
RAPL measures the whole socket, every process on it included, not just this one.

`energy_uj` counts up to `max_energy_range_uj` and wraps to 0. Each read compares with the last
raw value and adds the range when the counter went down; a background thread (`poll_s`) reads
often enough that at most one wrap happens between reads.

Since Linux 5.10 `energy_uj` is readable by root only (CVE-2020-8694, "Platypus"); a
PermissionError makes the backend unavailable with a note, never a crash.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> z = root / "intel-rapl:0"; z.mkdir()
>>> _ = (z / "name").write_text("package-0\\n"); _ = (z / "energy_uj").write_text("1000000\\n")
>>> _ = (z / "max_energy_range_uj").write_text("262143328850\\n")
>>> rapl = RaplBackend(root, poll_s=None)
>>> before = rapl.snapshot()
>>> _ = (z / "energy_uj").write_text("3500000\\n")
>>> [(r.component, r.energy_j, r.method) for r in rapl.readings(before, rapl.snapshot(), time_s=1.0)]
[('cpu:package-0', 2.5, 'measured:rapl')]
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from .base import EnergyBackend

__all__ = ["RaplBackend", "DEFAULT_POWERCAP_ROOT"]

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"
RAPL_UPDATE_PERIOD_S = 0.001  # the RAPL energy status registers update about every 1 ms
_ZONE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")


@dataclass
class _Counter:
    path: Path
    range_uj: int
    last_raw: int
    total_uj: int = 0

    def read(self) -> int:
        raw = int(self.path.read_text())
        delta = raw - self.last_raw
        if delta < 0:  # wrapped past max_energy_range_uj
            delta += self.range_uj
        self.last_raw = raw
        self.total_uj += delta
        return self.total_uj


class RaplBackend(EnergyBackend):
    """Package and DRAM energy from powercap, as 'measured:rapl'.

    root: the powercap directory (a fake tree in tests). poll_s: how often a daemon thread reads
    the counters to catch wraps (None: no thread; then a window longer than one wrap period,
    `max_energy_range_uj` / power, loses a whole range). Default: a tenth of the fastest
    possible wrap at 1 kW, at most 10 s.
    """

    name = "rapl"

    def __init__(self, root: str | Path = DEFAULT_POWERCAP_ROOT, poll_s: float | None | str = "auto"):
        super().__init__()
        self.root = Path(root)
        self._counters: dict[str, _Counter] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self._discover()
        except PermissionError as e:
            self._counters.clear()
            self.note = (f"RAPL: {e.filename} is not readable (permission denied; energy_uj is root-only "
                         f"since Linux 5.10, CVE-2020-8694). Fix: `sudo chmod a+r {self.root}/intel-rapl:*/energy_uj` "
                         f"or run as root. CPU energy falls back to an estimate.")
        except OSError as e:
            self._counters.clear()
            self.note = f"RAPL: cannot read {getattr(e, 'filename', self.root)} ({e.strerror or e})"
        if not self._counters and self.note is None:
            self.note = f"RAPL: no package or dram zone under {self.root}"
        for comp in self._counters:
            self.methods[comp] = "measured:rapl"
            self.update_period_s[comp] = RAPL_UPDATE_PERIOD_S
        if self._counters and poll_s is not None:
            if poll_s == "auto":
                smallest_range_j = min(c.range_uj for c in self._counters.values()) / 1e6
                poll_s = min(10.0, smallest_range_j / 1000.0 / 10)
            self._thread = threading.Thread(target=self._poll, args=(float(poll_s),), daemon=True,
                                            name="powertrain-rapl-poll")
            self._thread.start()

    def _discover(self) -> None:
        if not self.root.is_dir():
            return
        zones = {}
        for d in sorted(self.root.iterdir()):
            m = _ZONE.match(d.name)
            if m and (d / "energy_uj").exists():
                zones[d.name] = (m, (d / "name").read_text().strip())
        for zone, (m, name) in zones.items():
            if re.fullmatch(r"package-\d+", name):
                comp = f"cpu:{name}"
            elif name == "dram":
                parent = f"intel-rapl:{m.group(1)}"
                parent_name = zones[parent][1] if m.group(2) is not None and parent in zones else zone
                comp = f"dram:{parent_name}"
            else:
                continue
            d = self.root / zone
            raw = int((d / "energy_uj").read_text())  # PermissionError surfaces here
            range_uj = int((d / "max_energy_range_uj").read_text())
            self._counters[comp] = _Counter(d / "energy_uj", range_uj, raw)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {comp: c.read() / 1e6 for comp, c in self._counters.items()}

    def _poll(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.snapshot()
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
