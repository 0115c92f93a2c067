"""Carbon arithmetic, the peak table (dense figures), the measured-and-cached CPU peak, MFU,
and peak memory."""
import json
import resource

import pytest
import torch

from powertrain.measure import memory, peak
from powertrain.measure.carbon import REGIONS, CarbonModel, grid_intensity
from powertrain.measure.peak import GPU_PEAKS, Peak, cpu_peak, lookup_peak, mfu


# --- carbon -------------------------------------------------------------------------------------

def test_co2e_is_kwh_times_pue_times_intensity_and_cost_is_priced_kwh():
    model = CarbonModel(grid_intensity(381), pue=1.2, price_per_kwh=0.3, currency="EUR")
    energy_j = 7.2e6  # 2 kWh at the plug of the computer
    assert model.kwh(energy_j) == pytest.approx(2 * 1.2)
    assert model.co2e_g(energy_j) == pytest.approx(2 * 1.2 * 381)
    assert model.cost(energy_j) == pytest.approx(2 * 1.2 * 0.3)
    assert CarbonModel(grid_intensity(0)).co2e_g(energy_j) == 0
    assert CarbonModel().cost(energy_j) is None
    assert CarbonModel().intensity.region == "world" and CarbonModel().pue == 1.0


def test_region_table_is_sourced_and_errors_name_the_fix():
    assert len(REGIONS) >= 12
    assert all(r.source and r.year and r.g_per_kwh > 0 for r in REGIONS.values())
    assert REGIONS["france"].g_per_kwh == 56  # our table; CodeCarbon's, when installed, answers first:
    assert grid_intensity(" France ").g_per_kwh == pytest.approx(56, abs=1)  # 56.04 in CodeCarbon 3.3.2
    with pytest.raises(ValueError, match="not in the grid table.*or a number"):
        grid_intensity("atlantis")
    with pytest.raises(ValueError, match="negative"):
        grid_intensity(-1)
    with pytest.raises(ValueError, match="PUE"):
        CarbonModel(pue=0.9)
    assert CarbonModel(grid_intensity(100), pue=1.1).to_dict()["intensity"]["source"] == "given"


# --- peak table ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, dtype, device, tflops, watts", [
    ("NVIDIA H100 80GB HBM3", "bf16", "NVIDIA H100 SXM", 989.4, 700),
    ("NVIDIA H100 PCIe", "bf16", "NVIDIA H100 PCIe", 756, 350),
    ("NVIDIA H200", "fp8", "NVIDIA H200 SXM", 1978.9, 700),
    ("NVIDIA A100-SXM4-80GB", "tf32", "NVIDIA A100 SXM", 156, 400),
    ("NVIDIA A100 80GB PCIe", "bf16", "NVIDIA A100 PCIe 80GB", 312, 300),
    ("NVIDIA A100-PCIE-40GB", "fp32", "NVIDIA A100 PCIe 40GB", 19.5, 250),
    ("NVIDIA L4", "bf16", "NVIDIA L4", 121, 72),
    ("NVIDIA L40S", "bf16", "NVIDIA L40S", 362.05, 350),
    ("Tesla V100-SXM2-16GB", "fp16", "NVIDIA V100 SXM2", 125, 300),
    ("Tesla V100-PCIE-32GB", "fp32", "NVIDIA V100 PCIe", 14, 250),
    ("Tesla T4", "fp16", "NVIDIA T4", 65, 70),
    ("NVIDIA GeForce RTX 4090", "bf16", "NVIDIA GeForce RTX 4090", 165.2, 450),
    ("NVIDIA A10", "bf16", "NVIDIA A10", 125, 150),
])
def test_lookup_known_gpus(name, dtype, device, tflops, watts):
    p = lookup_peak(name, dtype)
    assert (p.device, p.dtype, p.rated_power_w) == (device, dtype, watts)
    assert p.flops_per_s == pytest.approx(tflops * 1e12)
    assert p.flops_per_j == pytest.approx(tflops * 1e12 / watts)


@pytest.mark.parametrize("name, dtype", [("NVIDIA H100 NVL", "bf16"), ("NVIDIA L40", "bf16"),
                                         ("NVIDIA A10G", "fp32"), ("Tesla V100S-PCIE-32GB", "fp32"),
                                         ("Tesla V100-SXM2-16GB", "bf16"), ("Some New GPU", "fp32")])
def test_unknown_device_or_dtype_has_no_peak(name, dtype):
    assert lookup_peak(name, dtype) is None


def test_table_lists_dense_figures():
    """Dense tensor throughput doubles from tf32 to bf16 to fp8 on these chips; a sparse figure
    slipped in would break the ratio (the L4's datasheet rounds, hence 2%)."""
    for spec in GPU_PEAKS:
        f = spec.dense_flops
        if "tf32" in f and "bf16" in f and spec.device != "NVIDIA GeForce RTX 4090":
            assert f["bf16"] / f["tf32"] == pytest.approx(2, rel=0.02), spec.device
        if "fp8" in f:
            assert f["fp8"] / f["bf16"] == pytest.approx(2, rel=0.02), spec.device
        assert "datasheet" in spec.source or "whitepaper" in spec.source
    # the best-known trap: H100 SXM bf16 is 989 dense, 1979 with sparsity
    assert lookup_peak("H100 SXM5", "bf16").flops_per_s < 1e15


def test_mfu_is_none_without_a_peak():
    p = Peak("x", "fp32", 2e11, "test")
    assert mfu(5e10, p) == 0.25
    assert mfu(5e10, None) is None and mfu(None, p) is None
    assert mfu(1.0, Peak("x", "fp32", 0.0, "test")) is None


# --- measured CPU peak, cached per machine -------------------------------------------------------

def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    calls = []

    def fake_measure(dtype="fp32"):
        calls.append(dtype)
        return Peak("cpu: test", dtype, 1.5e11 * len(calls), "measured: fake")

    monkeypatch.setattr(peak, "measure_cpu_peak", fake_measure)
    path = tmp_path / "peak.json"
    first = cpu_peak("fp32", cache=path)
    again = cpu_peak("fp32", cache=path)
    assert calls == ["fp32"] and again == first
    stored = json.loads(path.read_text())
    (key,) = stored
    assert "fp32" in key and str(torch.get_num_threads()) + " threads" in key
    assert stored[key]["flops_per_s"] == 1.5e11
    assert cpu_peak("fp32", cache=path, refresh=True).flops_per_s == 3e11
    cpu_peak("bf16", cache=path)
    assert calls == ["fp32", "fp32", "bf16"] and len(json.loads(path.read_text())) == 2
    assert peak.peak_for("cpu", "fp32", cache=path, measure=False).flops_per_s == 3e11
    assert peak.peak_for("cpu", "fp64", cache=path, measure=False) is None


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("POWERTRAIN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert peak.cache_dir() == tmp_path / "powertrain"
    monkeypatch.setenv("POWERTRAIN_CACHE_DIR", str(tmp_path / "x"))
    assert peak.cache_dir() == tmp_path / "x"


def test_measure_cpu_peak_really_times_a_matmul():
    p = peak.measure_cpu_peak("fp32", target_s=0.01, repeats=2, max_n=512)
    assert p.flops_per_s > 0 and p.dtype == "fp32" and p.source.startswith("measured: ")
    assert f"{torch.get_num_threads()} threads" in p.source
    with pytest.raises(ValueError, match="dtype"):
        peak.measure_cpu_peak("int8")


# --- peak memory --------------------------------------------------------------------------------

def _rss_bytes():
    from powertrain.measure.energy.estimate import process_rss_bytes
    return process_rss_bytes()


def test_cpu_peak_memory_sees_a_large_allocation():
    assert memory.reset_peak_memory() is True  # Linux: clear_refs
    before = memory.peak_memory()
    assert before.method == "VmHWM" and before.peak_bytes >= _rss_bytes() - (8 << 20)
    block = torch.ones(96 << 20, dtype=torch.uint8)  # 96 MiB, touched
    after = memory.peak_memory()
    assert after.peak_bytes - before.peak_bytes >= (96 << 20) * 0.9
    del block


def test_ru_maxrss_fallback_is_kib_on_linux(monkeypatch):
    monkeypatch.setattr(memory, "_vmhwm_bytes", lambda: None)
    m = memory.peak_memory("cpu")
    assert m.method == "ru_maxrss"
    assert m.peak_bytes == resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
