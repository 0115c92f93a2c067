"""Settings read from the environment: each one read here, in one place, and checked when read.

  POWERTRAIN_CACHE_DIR       cache folder (measured peaks, generated datasets); default
                             $XDG_CACHE_HOME/powertrain, else ~/.cache/powertrain.
                             POWERTRAIN_CACHE is read as a deprecated alias.
  POWERTRAIN_DATA            where image datasets are looked for; default <cache dir>/datasets.
  POWERTRAIN_CPU_W_PER_CORE  W per busy CPU core for the energy estimate (a finite number > 0);
                             default: the TDP table in measure/energy/estimate.py.

A bad value is a one-line `SettingError` naming the variable, what it must be, and the fix.

>>> import os; os.environ["POWERTRAIN_CPU_W_PER_CORE"] = "4.5"
>>> cpu_w_per_core()
4.5
>>> del os.environ["POWERTRAIN_CPU_W_PER_CORE"]
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Optional

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
