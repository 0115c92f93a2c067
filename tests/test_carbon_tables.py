"""The field's tables: CodeCarbon's CPU TDPs and grid intensities (read here from its files, independently of
measure/tables.py) answer first when it is installed, ours after; `powertrain regions` lists them; the GPU
peak table against Lightning's `get_available_flops` where both know the chip."""
import csv
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from powertrain.measure import cpu_w_per_core, grid_intensity, lookup_peak
from powertrain.measure.carbon import REGIONS


def _codecarbon_data() -> Path:
    cc = pytest.importorskip("codecarbon")
    return Path(cc.__file__).parent / "data"


def test_grid_intensity_comes_from_codecarbon_with_its_source():
    data = _codecarbon_data()
    mix = json.loads((data / "private_infra" / "global_energy_mix.json").read_text())
    for iso in ("FRA", "DEU", "IND", "BRA"):
        c = mix[iso]
        for key in (c["country_name"], iso.lower()):
            g = grid_intensity(key)
            assert g.g_per_kwh == c["carbon_intensity"] and g.year == c["year"], key
            assert "CodeCarbon" in g.source and "global_energy_mix.json" in g.source
    with open(data / "cloud" / "impact.csv", newline="", encoding="utf-8-sig") as f:
        row = next(csv.DictReader(f))
    g = grid_intensity(f"{row['provider']}:{row['region']}")
    assert g.g_per_kwh == float(row["impact"]) and "cloud/impact.csv" in g.source
    assert grid_intensity("world") == REGIONS["world"]  # ours where CodeCarbon has none
    with pytest.raises(ValueError, match="powertrain regions"):
        grid_intensity("atlantis")


def test_cpu_tdp_comes_from_codecarbon_and_the_source_says_so():
    data = _codecarbon_data()
    with open(data / "hardware" / "cpu_power.csv", newline="", encoding="utf-8-sig") as f:
        tdp = {r["Name"]: r["TDP"] for r in csv.DictReader(f)}
    tdp = {k: float(v) for k, v in tdp.items() if k in ("AMD EPYC 7763", "Intel Xeon Platinum 8358")}
    w, source = cpu_w_per_core("AMD EPYC 7763 64-Core Processor")
    assert w == tdp["AMD EPYC 7763"] / 64 and "cpu_power.csv" in source and "64 cores (from the model name)" in source
    w, source = cpu_w_per_core("Intel(R) Xeon(R) Platinum 8358 CPU @ 2.60GHz")  # cores from our table
    assert w == tdp["Intel Xeon Platinum 8358"] / 32 and "cpu_power.csv" in source and "Intel ARK" in source
    w, source = cpu_w_per_core("Intel(R) Xeon(R) Processor")  # no model number: no table has it
    assert "not in the TDP table" in source


def test_regions_command_lists_countries_and_cloud_regions():
    _codecarbon_data()
    p = subprocess.run([sys.executable, "-m", "powertrain", "regions"], capture_output=True, text=True, timeout=120)
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and len(lines) >= 150, len(lines)
    names = {line.split()[0] for line in lines}
    assert {"france", "world", "gcp:europe-west1"} <= names
    values = [float(line.split("g CO2e/kWh")[0].split()[-1]) for line in lines]
    assert values == sorted(values)
    p = subprocess.run([sys.executable, "-m", "powertrain", "regions", "--json"], capture_output=True, text=True,
                       timeout=120)
    assert len(json.loads(p.stdout)) == len(lines)


# torch's name for each chip; Lightning's and our table's known disagreements, each with its reason
CHIPS = {"NVIDIA A100-SXM4-80GB": "a100", "NVIDIA H100 80GB HBM3": "h100 sxm", "NVIDIA H100 PCIe": "h100 pcie",
         "NVIDIA H200": "h200", "NVIDIA L4": "l4", "NVIDIA L40S": "l40s", "NVIDIA GeForce RTX 4090": "rtx 4090",
         "NVIDIA GeForce RTX 5090": "rtx 5090"}
DISAGREE = {
    # Lightning maps any name containing "l4" (so "l40s") to the L4's figures
    ("NVIDIA L40S", d): "l4" for d in ("fp32", "tf32", "bf16", "fp16")
} | {
    # Lightning lists the RTX 4090's bf16/fp16 at its TF32 rate; the Ada whitepaper: 165.2 TFLOPS dense, FP32 accumulate
    ("NVIDIA GeForce RTX 4090", "bf16"): 0.5, ("NVIDIA GeForce RTX 4090", "fp16"): 0.5,
}


def test_gpu_peaks_against_lightning_where_both_know_the_chip(monkeypatch):
    pytest.importorskip("lightning")
    from lightning.fabric.accelerators import cuda as lightning_cuda
    from lightning.fabric.utilities.throughput import get_available_flops

    monkeypatch.setattr(lightning_cuda, "_is_ampere_or_later", lambda: False)  # fp32 as fp32 (no GPU here to ask)

    dtypes = {"fp32": torch.float32, "tf32": "tfloat32", "bf16": torch.bfloat16, "fp16": torch.float16}
    compared = 0
    for name in CHIPS:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        for ours_dtype, theirs_dtype in dtypes.items():
            ours = lookup_peak(name, ours_dtype)
            assert ours is not None and ours.source and ours.rated_power_w, (name, ours_dtype)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Lightning warns about chips it does not know
                theirs = get_available_flops(torch.device("cuda", 0), theirs_dtype)
            if theirs is None:
                continue
            compared += 1
            why = DISAGREE.get((name, ours_dtype))
            if why == "l4":
                assert theirs == pytest.approx(lookup_peak("NVIDIA L4", ours_dtype).flops_per_s, rel=0.02)
            elif why is not None:
                assert theirs / ours.flops_per_s == pytest.approx(why, rel=0.02), (name, ours_dtype)
            else:
                assert ours.flops_per_s == pytest.approx(theirs, rel=0.02), (name, ours_dtype, theirs)
    assert compared >= 16  # A100, both H100s, L4, L40S and RTX 4090 at four dtypes each
