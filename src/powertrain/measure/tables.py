"""The field's tables instead of ours, when CodeCarbon is installed (`pip install 'powertrain[carbon]'`):
its CPU TDP list (cpu_power.csv, ~4,900 chips), its grid intensities per country (global_energy_mix.json,
~210 countries, Ember / Our World in Data) and per cloud region (cloud/impact.csv: the providers' own
figures). They are read as data files from the installed package (codecarbon itself is never imported:
no tracker starts, no logging is configured). Without CodeCarbon every function here returns nothing and
our own tables (carbon.REGIONS, energy.CPU_TDP) answer. Each figure keeps the file it came from.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional


@lru_cache(maxsize=1)
def codecarbon_data() -> Optional[tuple[Path, str]]:
    """(CodeCarbon's data folder, its version), or None when it is not installed."""
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not data.is_dir():
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("codecarbon")
    except PackageNotFoundError:
        v = "?"
    return data, v


def _source(relative: str) -> str:
    data, v = codecarbon_data()
    return f"CodeCarbon {v} data/{relative}"


# ---------------------------------------------------------------- CPUs
@lru_cache(maxsize=1)
def _cpu_rows() -> dict:
    found = codecarbon_data()
    if found is None:
        return {}
    rows = {}
    try:
        with open(found[0] / "hardware" / "cpu_power.csv", newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                try:
                    rows[_normal(row["Name"])] = (row["Name"], float(row["TDP"]))
                except (KeyError, ValueError):  # a malformed row (the file has a few): skipped
                    continue
    except OSError:  # another CodeCarbon version without this file: our table answers
        return {}
    return rows


def _normal(name: str) -> str:
    """A CPU name as the tables spell it: no (R)/(TM), 'CPU', 'Processor', core counts or clock."""
    s = re.sub(r"\((r|tm)\)", " ", name.lower())
    s = re.sub(r"@.*$|\bcpu\b|\bprocessor\b|\b\d+-core\b|\bwith\b.*$", " ", s)
    return " ".join(s.split())


def cpu_tdp(model_name: str) -> Optional[tuple[str, float, str]]:
    """(the chip's name, its TDP in W, the source) from CodeCarbon's table: the name itself, else the
    longest table name (with a model number) that the name contains as whole words; None otherwise."""
    rows = _cpu_rows()
    if not rows:
        return None
    key = _normal(model_name)
    hit = rows.get(key)
    if hit is None:
        padded = f" {key} "
        names = [k for k in rows if re.search(r"\d", k) and f" {k} " in padded]
        hit = rows[max(names, key=len)] if names else None
    return (hit[0], hit[1], _source("hardware/cpu_power.csv")) if hit else None


# ---------------------------------------------------------------- grids
@dataclass(frozen=True)
class Grid:
    region: str  # country name (lower case), or provider:region for a cloud region
    g_per_kwh: float
    source: str
    year: Optional[int]
    aliases: tuple = ()  # other names it answers to: the ISO code, the bare cloud region


@lru_cache(maxsize=1)
def grids() -> tuple[Grid, ...]:
    """CodeCarbon's countries and cloud regions (empty without CodeCarbon, or where its files differ)."""
    found = codecarbon_data()
    if found is None:
        return ()
    try:
        return _grids(found[0])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ()


def _grids(data: Path) -> tuple[Grid, ...]:
    out = []
    mix = json.loads((data / "private_infra" / "global_energy_mix.json").read_text(encoding="utf-8"))
    src = _source("private_infra/global_energy_mix.json") + " (Ember / Our World in Data)"
    for iso, c in mix.items():
        g = c.get("carbon_intensity")
        if isinstance(g, (int, float)) and g >= 0 and c.get("country_name"):
            out.append(Grid(c["country_name"].lower(), float(g), src, c.get("year"), (iso.lower(),)))
    with open(data / "cloud" / "impact.csv", newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            try:
                g = float(row["impact"])
            except (KeyError, ValueError):
                continue
            where = ", ".join(x for x in (row.get("city"), row.get("country_name")) if x)
            out.append(Grid(f"{row['provider']}:{row['region']}", g,
                            f"{_source('cloud/impact.csv')}: {row['providerName']} {row['region']} ({where}); "
                            f"{row.get('source') or 'the provider'}", None, (row["region"].lower(),)))
    return tuple(out)


def find_grid(key: str) -> Optional[Grid]:
    """A country (name or ISO 3166 alpha-3 code) or a cloud region (`provider:region`, or the bare region
    where only one provider has it) from CodeCarbon's tables; None when they do not have it."""
    key = key.strip().lower()
    exact = [g for g in grids() if g.region == key]
    if exact:
        return exact[0]
    other = [g for g in grids() if key in g.aliases]
    return other[0] if len(other) == 1 else None
