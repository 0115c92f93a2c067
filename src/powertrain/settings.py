"""Settings read from the environment: each one read here, in one place, and checked when read.

  POWERTRAIN_CACHE_DIR       cache folder (measured peaks, generated datasets); default
                             $XDG_CACHE_HOME/powertrain, else ~/.cache/powertrain.
                             POWERTRAIN_CACHE is read as a deprecated alias.
  POWERTRAIN_DATA            where image datasets are looked for; default <cache dir>/datasets.
  POWERTRAIN_CPU_W_PER_CORE  W per busy CPU core for the energy estimate (a finite number > 0);
                             default: the TDP table in measure/energy/estimate.py.
  OMP_NUM_THREADS, OMP_WAIT_POLICY  the user's own OpenMP settings: always obeyed (see `choose_threads`).

A bad value is a one-line `SettingError` naming the variable, what it must be, and the fix.

>>> import os; os.environ["POWERTRAIN_CPU_W_PER_CORE"] = "4.5"
>>> cpu_w_per_core()
4.5
>>> del os.environ["POWERTRAIN_CPU_W_PER_CORE"]
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .errors import SettingError

VERSION = "0.1.0"  # the package's version (pyproject.toml reads it here; env.json and reports record it)

_warned: set[str] = set()


def _get(name: str) -> Optional[str]:
    """The variable's value, or None when it is unset or blank."""
    value = os.environ.get(name)
    return value if value is not None and value.strip() else None


def env_number(name: str, what: str, example: str) -> Optional[float]:
    """`name` as a finite number > 0, None when unset; else SettingError naming it."""
    text = _get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise SettingError(f"environment variable {name}={text!r}: expected a finite number > 0 ({what}); "
                           f"set it to e.g. {name}={example}, or unset it")
    return value


def cpu_w_per_core() -> Optional[float]:
    """$POWERTRAIN_CPU_W_PER_CORE: W per busy core for the CPU energy estimate, or None when unset."""
    return env_number("POWERTRAIN_CPU_W_PER_CORE", "watts per busy CPU core", "4.4")


def cache_dir() -> Path:
    """$POWERTRAIN_CACHE_DIR, else $XDG_CACHE_HOME/powertrain, else ~/.cache/powertrain."""
    root = _get("POWERTRAIN_CACHE_DIR")
    if root is None and _get("POWERTRAIN_CACHE") is not None:
        root = _get("POWERTRAIN_CACHE")
        if "POWERTRAIN_CACHE" not in _warned:
            _warned.add("POWERTRAIN_CACHE")
            warnings.warn("POWERTRAIN_CACHE is deprecated: set POWERTRAIN_CACHE_DIR instead (one cache folder "
                          "for peaks and datasets)", FutureWarning, stacklevel=2)
    if root is not None:
        return Path(root).expanduser()
    return Path(_get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "powertrain"


def data_dir() -> Path:
    """$POWERTRAIN_DATA, else <cache_dir()>/datasets: where image datasets are looked for by default."""
    root = _get("POWERTRAIN_DATA")
    return Path(root).expanduser() if root is not None else cache_dir() / "datasets"


# ---- CPU threads: decided once per process, before torch's OpenMP pool starts where possible ----------------------

@dataclass(frozen=True)
class ThreadChoice:
    """How many CPU threads torch uses, OpenMP's wait policy, and why (env.json and the bill record it)."""

    threads: Optional[int]  # None: torch's own default (every CPU was free)
    wait_policy: Optional[str]  # PASSIVE: idle threads sleep; None: OpenMP's default (spin a while, then sleep)
    reason: str



def usable_cpus() -> int:
    """How many CPUs this process may use: its affinity mask, capped by a container's CPU quota (cgroup v2)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def _proc_stat(path: str = "/proc/stat") -> dict[int, tuple[int, int]]:
    """CPU number -> (idle jiffies incl. iowait, all jiffies) from /proc/stat's per-CPU lines (guest time is
    already inside user time, so it is not added twice)."""
    out = {}
    with open(path) as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *fields = line.split()
                v = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
                out[int(name[3:])] = (v[3] + v[4], sum(v))
    return out


def free_cpus(window_s: float = 0.2, read: Callable[[], dict] = _proc_stat) -> Optional[float]:
    """CPUs' worth of idle time among this process's CPUs over `window_s` (2.0: two idle CPUs; 1.0: one
    busy process on a 2-CPU machine, wherever the scheduler moves it); None where /proc/stat is missing."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        cpus = None
    try:
        before = read()
        time.sleep(window_s)
        after = read()
    except (OSError, ValueError, IndexError):
        return None
    idle = 0.0
    for c in before.keys() & after.keys():
        d_all = after[c][1] - before[c][1]
        if cpus is None or c in cpus:
            idle += (after[c][0] - before[c][0]) / d_all if d_all > 0 else 1.0
    return idle


_chosen: Optional[ThreadChoice] = None


def chosen_threads() -> Optional[ThreadChoice]:
    """This process's thread choice, once one was made (by the CLI before torch loaded, or by a Trainer)."""
    return _chosen


def choose_threads(requested: int | str = "auto", *, keep: Optional[int] = None,
                   free: Optional[Callable[[], Optional[float]]] = None, cpus: Optional[int] = None,
                   environ=os.environ) -> ThreadChoice:
    """This process's CPU threads and OpenMP wait policy, recorded as its choice (`chosen_threads`).

    The user's own OMP_NUM_THREADS / OMP_WAIT_POLICY win; then an explicit `requested` count (train.threads: N);
    then `keep` (a resumed run keeps its count: another count gives other bits); else 'auto', as many threads as
    CPUs are free, measured now (at least one). Beside busy CPUs idle OpenMP threads sleep (PASSIVE) instead of
    spinning for a core another process holds (bench/omp_wait.py: 1.2-2x faster there).

    >>> choose_threads(3, environ={})
    ThreadChoice(threads=3, wait_policy=None, reason='train.threads=3')
    >>> choose_threads("auto", free=lambda: 1.1, cpus=2, environ={})
    ThreadChoice(threads=1, wait_policy='PASSIVE', reason='auto: 1 of 2 CPUs free, idle time over 0.2 s')
    >>> choose_threads("auto", free=lambda: 1.9, cpus=2, environ={}).threads is None  # torch's own default
    True
    """
    global _chosen
    cpus = usable_cpus() if cpus is None else cpus
    user_n, user_policy = environ.get("OMP_NUM_THREADS", "").strip(), environ.get("OMP_WAIT_POLICY", "").strip()
    if user_n or user_policy:  # the user's settings: torch read them when it loaded (a later set_num_threads stands too)
        said = " and ".join(f"{k}={v}" for k, v in (("OMP_NUM_THREADS", user_n), ("OMP_WAIT_POLICY", user_policy)) if v)
        _chosen = ThreadChoice(int(requested) if requested != "auto" else None, user_policy or None,
                               f"{said} in the environment" + (f"; train.threads={requested}" if requested != "auto" else ""))
        return _chosen
    if requested != "auto":
        _chosen = ThreadChoice(int(requested), None, f"train.threads={requested}")
        return _chosen
    idle = (free or free_cpus)()
    if idle is None:
        _chosen = ThreadChoice(keep, None, "free CPUs cannot be measured here (no /proc/stat)")
        return _chosen
    n = max(1, min(cpus, round(idle)))
    busy, reason = n < cpus, f"auto: {n} of {cpus} CPUs free, idle time over 0.2 s"
    if keep is not None:
        n, reason = keep, f"the run's own count, kept so that resuming gives the same bits; {reason[6:]}"
    _chosen = ThreadChoice(n if busy or keep is not None else None, "PASSIVE" if busy else None, reason)
    return _chosen


def recorded_threads(env: dict) -> Optional[int]:
    """The CPU thread count a run's env.json records (older runs: torch's count then), or None."""
    n = (env.get("threads") or {}).get("threads") if isinstance(env.get("threads"), dict) else None
    n = n or env.get("torch_threads")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None


def export_threads(choice: ThreadChoice, environ=os.environ) -> None:
    """Put the choice where OpenMP reads it when torch loads (only variables the user has not set)."""
    if choice.threads is not None:
        environ.setdefault("OMP_NUM_THREADS", str(choice.threads))
    if choice.wait_policy:
        environ.setdefault("OMP_WAIT_POLICY", choice.wait_policy)
