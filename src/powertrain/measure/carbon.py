"""CO2e and cost of energy: kWh x PUE x grid intensity (g CO2e/kWh), and kWh x PUE x price.

With CodeCarbon installed (`pip install 'powertrain[carbon]'`), a region is first looked up in its tables
(measure/tables.py: ~210 countries and the cloud providers' regions); the table below answers otherwise.
Grid intensities here are yearly averages of electricity *generation* (lifecycle, g CO2e/kWh) from
Ember's yearly electricity data (with the Energy Institute), as tabulated by Our World in Data
for 2023; the world figure is Ember's Global Electricity Review 2024. A yearly average is not
the marginal or hourly intensity of your grid at the time of your run: pass your own number
(g_per_kwh=...) when you have a better one (e.g. your provider's or Electricity Maps').

PUE (power usage effectiveness: facility energy / IT energy) defaults to 1.0: the meter
measures the computer, and a local machine has no data-centre overhead on top. For a data
centre pass its PUE (hyperscalers publish ~1.1-1.2).

>>> grid = CarbonModel(grid_intensity("france"))
>>> round(grid.co2e_g(3.6e6))              # 1 kWh at 56 g/kWh
56
>>> round(CarbonModel(grid_intensity(400), pue=1.5, price_per_kwh=0.2).cost(3.6e6), 6)  # 1 kWh x 1.5 x 0.2
0.3
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["GridIntensity", "REGIONS", "grid_intensity", "all_regions", "CarbonModel", "J_PER_KWH"]

J_PER_KWH = 3.6e6
_OWID = ("Ember & Energy Institute via Our World in Data, 'Carbon intensity of electricity generation' "
         "(ourworldindata.org/grapher/carbon-intensity-electricity)")


@dataclass(frozen=True)
class GridIntensity:
    region: str
    g_per_kwh: float
    source: str
    year: int | None = None


REGIONS: dict[str, GridIntensity] = {r.region: r for r in (
    GridIntensity("world", 481, "Ember, Global Electricity Review 2024 (global power sector, 2023)", 2023),
    GridIntensity("norway", 30, "Ember 2023, via Statista 'emissions intensity of the power sector by country'", 2023),
    GridIntensity("france", 56, _OWID, 2023),
    GridIntensity("finland", 79, _OWID, 2023),
    GridIntensity("brazil", 98, _OWID, 2023),
    GridIntensity("austria", 111, _OWID, 2023),
    GridIntensity("belgium", 138, _OWID, 2023),
    GridIntensity("denmark", 152, _OWID, 2023),
    GridIntensity("canada", 170, _OWID, 2023),
    GridIntensity("ireland", 291, _OWID, 2023),
    GridIntensity("greece", 337, _OWID, 2023),
    GridIntensity("germany", 381, _OWID, 2023),
    GridIntensity("czechia", 450, _OWID, 2023),
    GridIntensity("australia", 549, _OWID, 2023),
    GridIntensity("china", 582, _OWID, 2023),
    GridIntensity("india", 713, _OWID, 2023),
)}


def grid_intensity(region_or_g_per_kwh: str | float) -> GridIntensity:
    """A country or cloud region from CodeCarbon's tables (when installed), else from `REGIONS`
    (case-insensitive), or a number of g CO2e/kWh given directly.

    >>> round(grid_intensity("Germany").g_per_kwh), grid_intensity(120).source
    (381, 'given')
    """
    if isinstance(region_or_g_per_kwh, (int, float)):
        if region_or_g_per_kwh < 0:
            raise ValueError(f"grid intensity: {region_or_g_per_kwh} g/kWh is negative; expected >= 0")
        return GridIntensity("given", float(region_or_g_per_kwh), "given")
    from .tables import codecarbon_data, find_grid

    key = region_or_g_per_kwh.strip().lower()
    g = find_grid(key)
    if g is not None:
        return GridIntensity(g.region, g.g_per_kwh, g.source, g.year)
    if key not in REGIONS:
        known = ("a country, its ISO code or a cloud region listed by `powertrain regions`" if codecarbon_data()
                 else f"one of {', '.join(sorted(REGIONS))} (more with pip install 'powertrain[carbon]')")
        raise ValueError(f"region '{region_or_g_per_kwh}' is not in the grid tables; expected {known}, "
                         f"or a number of g CO2e/kWh")
    return REGIONS[key]


def all_regions() -> list[GridIntensity]:
    """Every region `grid_intensity` knows: CodeCarbon's countries and cloud regions, then ours that it lacks."""
    from .tables import grids

    out = [GridIntensity(g.region, g.g_per_kwh, g.source, g.year) for g in grids()]
    have = {r.region for r in out}
    return out + [r for r in REGIONS.values() if r.region not in have]


@dataclass(frozen=True)
class CarbonModel:
    """Turns joules into kWh at the facility, grams of CO2e and (if priced) money."""

    intensity: GridIntensity = REGIONS["world"]
    pue: float = 1.0
    price_per_kwh: float | None = None
    currency: str = "USD"

    def __post_init__(self) -> None:
        if self.pue < 1.0:
            raise ValueError(f"pue: {self.pue} is below 1.0; PUE is facility energy / IT energy, >= 1")

    def kwh(self, energy_j: float) -> float:
        """Facility kWh: IT energy x PUE."""
        return energy_j / J_PER_KWH * self.pue

    def co2e_g(self, energy_j: float) -> float:
        return self.kwh(energy_j) * self.intensity.g_per_kwh

    def cost(self, energy_j: float) -> float | None:
        return None if self.price_per_kwh is None else self.kwh(energy_j) * self.price_per_kwh

    def to_dict(self) -> dict:
        return asdict(self)
