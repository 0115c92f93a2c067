"""Energy backends against fake counters with known values: a fake powercap tree (RAPL, with
wraparound and a permission error), a fake pynvml module (energy counter and the power-sampling
fallback), and the estimate's arithmetic. A measured and an estimated component are never summed
without the label saying so."""
import pathlib
import statistics
import sys
import threading

import pytest

from powertrain.measure.energy import (CPU_TDP, EnergyReading, EstimateBackend, NvmlBackend, RaplBackend,
                                       above_idle, combine_methods, cpu_w_per_core, detect_backends,
                                       measure_idle_power, sum_energy)
from powertrain.measure.energy.base import EnergyBackend
from powertrain.measure.energy.estimate import process_cpu_seconds

MAX_UJ = 262_143_328_850  # a typical max_energy_range_uj


def zone(root: pathlib.Path, zone_id: str, name: str, energy_uj: int, max_uj: int = MAX_UJ) -> pathlib.Path:
    d = root / zone_id
    d.mkdir()
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


def set_uj(d: pathlib.Path, value: int) -> None:
    (d / "energy_uj").write_text(f"{value}\n")


@pytest.fixture
def powercap(tmp_path):
    """Two packages, package 0 with core and dram subzones, plus zones that must be ignored."""
    zones = {
        "pkg0": zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000),
        "core0": zone(tmp_path, "intel-rapl:0:0", "core", 500_000),
        "dram0": zone(tmp_path, "intel-rapl:0:1", "dram", 2_000_000),
        "pkg1": zone(tmp_path, "intel-rapl:1", "package-1", 7_000_000),
        "psys": zone(tmp_path, "intel-rapl:2", "psys", 9_000_000),
        "mmio": zone(tmp_path, "intel-rapl-mmio:0", "package-0", 1_000_000),
    }
    return tmp_path, zones


# --- RAPL -----------------------------------------------------------------------------------------

def test_rapl_reads_package_and_dram_differences(powercap):
    root, z = powercap
    rapl = RaplBackend(root, poll_s=None)
    assert rapl.available and rapl.note is None
    assert rapl.methods == {"cpu:package-0": "measured:rapl", "dram:package-0": "measured:rapl",
                            "cpu:package-1": "measured:rapl"}
    begin = rapl.snapshot()
    set_uj(z["pkg0"], 1_000_000 + 12_500_000)   # +12.5 J
    set_uj(z["dram0"], 2_000_000 + 750_000)     # +0.75 J
    set_uj(z["pkg1"], 7_000_000 + 3_000_000)    # +3 J
    set_uj(z["core0"], 99_000_000)              # inside the package: ignored
    set_uj(z["psys"], 99_000_000)               # contains the package: ignored
    got = {r.component: r.energy_j for r in rapl.readings(begin, rapl.snapshot(), time_s=2.0)}
    assert got == {"cpu:package-0": 12.5, "dram:package-0": 0.75, "cpu:package-1": 3.0}


def test_rapl_wraparound_through_max_energy_range(powercap):
    root, z = powercap
    rapl = RaplBackend(root, poll_s=None)
    set_uj(z["pkg0"], MAX_UJ - 1_000_000)
    begin = rapl.snapshot()
    set_uj(z["pkg0"], 500_000)  # wrapped: 1 J up to the range, 0.5 J after
    (r,) = [r for r in rapl.readings(begin, rapl.snapshot(), 10.0) if r.component == "cpu:package-0"]
    assert r.energy_j == pytest.approx(1.5)


def test_rapl_several_wraps_caught_by_polling(powercap):
    """Between the window's edges the counter wraps three times; each poll (a read) sees at
    most one wrap, so the total is every increment added up."""
    root, z = powercap
    small = 4_294_967_295  # some CPUs wrap every ~4.3 kJ
    for d in z.values():
        (d / "max_energy_range_uj").write_text(f"{small}\n")
    set_uj(z["pkg0"], 0)
    rapl = RaplBackend(root, poll_s=None)
    begin = rapl.snapshot()
    expected_uj, raw = 0, 0
    for step in [3_000_000_000, 3_000_000_000, 3_000_000_000, 3_000_000_000]:
        raw = (raw + step) % small
        expected_uj += step
        set_uj(z["pkg0"], raw)
        rapl.snapshot()  # what the poll thread does
    (r,) = [r for r in rapl.readings(begin, rapl.snapshot(), 60.0) if r.component == "cpu:package-0"]
    assert r.energy_j == pytest.approx(expected_uj / 1e6)


def test_rapl_permission_error_is_a_note_not_a_crash(powercap, monkeypatch):
    root, _ = powercap
    real = pathlib.Path.read_text

    def deny(self, *a, **k):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "read_text", deny)
    rapl = RaplBackend(root, poll_s=None)
    assert not rapl.available and rapl.snapshot() == {}
    assert "permission denied" in rapl.note and "energy_uj" in rapl.note and "chmod" in rapl.note


def test_rapl_missing_tree(tmp_path):
    rapl = RaplBackend(tmp_path / "nope", poll_s=None)
    assert not rapl.available and "no package or dram zone" in rapl.note


def test_rapl_short_window_is_flagged(powercap):
    rapl = RaplBackend(powercap[0], poll_s=None)
    s = rapl.snapshot()
    short = rapl.readings(s, s, time_s=0.0004)
    assert all("shorter than" in r.flags[0] for r in short)
    assert all(r.flags == () for r in rapl.readings(s, s, time_s=0.5))


def test_rapl_poll_thread_starts_and_stops(powercap):
    rapl = RaplBackend(powercap[0], poll_s=0.01)
    thread = rapl._thread
    assert thread is not None and thread.is_alive()
    rapl.close()
    assert not thread.is_alive()
    rapl.close()  # twice is fine


# --- NVML -----------------------------------------------------------------------------------------

class FakeNvml:
    """Just the pynvml calls the backend uses. energy_mj=None: the counter is not supported."""

    NVML_ERROR_NOT_SUPPORTED = 3

    class NVMLError(Exception):
        def __init__(self, value):
            super().__init__(value)
            self.value = value

    class NVMLError_NotSupported(NVMLError):
        def __init__(self):
            super().__init__(3)

    def __init__(self, energy_mj, power_mw=None, uuids=None, init_error=None):
        self.energy_mj = list(energy_mj)
        self.power_mw = list(power_mw or [50_000] * len(self.energy_mj))
        self.uuids = uuids or [f"GPU-{i:04d}-fake" for i in range(len(self.energy_mj))]
        self.init_error = init_error

    def nvmlInit(self):
        if self.init_error is not None:
            raise self.init_error

    def nvmlDeviceGetCount(self):
        return len(self.energy_mj)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUUID(self, h):
        return self.uuids[h]

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if self.energy_mj[h] is None:
            raise self.NVMLError_NotSupported()
        if isinstance(self.energy_mj[h], Exception):
            raise self.energy_mj[h]
        return self.energy_mj[h]

    def nvmlDeviceGetPowerUsage(self, h):
        return self.power_mw[h]


def test_nvml_energy_counter_differences(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake = FakeNvml([1_000_000, 5_000])
    gpu = NvmlBackend(nvml=fake)
    assert gpu.methods == {"gpu:0": "measured:nvml", "gpu:1": "measured:nvml"}
    begin = gpu.snapshot()
    fake.energy_mj[0] += 250_000  # mJ
    fake.energy_mj[1] += 1_234
    got = {r.component: (r.energy_j, r.method) for r in gpu.readings(begin, gpu.snapshot(), 5.0)}
    assert got == {"gpu:0": (250.0, "measured:nvml"), "gpu:1": (1.234, "measured:nvml")}
    assert all("shorter than" in r.flags[0] for r in gpu.readings(begin, begin, 0.05))  # < ~100 ms


@pytest.mark.parametrize("visible, nvml_indices", [("1", [1]), ("2,0", [2, 0]), ("0,9,1", [0]), ("", []),
                                                   ("GPU-0002", [2])])
def test_nvml_follows_cuda_visible_devices(monkeypatch, visible, nvml_indices):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    fake = FakeNvml([0, 10_000, 20_000])
    gpu = NvmlBackend(nvml=fake)
    snap = gpu.snapshot()
    assert snap == {f"gpu:{k}": fake.energy_mj[i] / 1000 for k, i in enumerate(nvml_indices)}


def test_nvml_falls_back_to_sampling_power_when_the_counter_is_not_supported():
    fake = FakeNvml([None], power_mw=[100_000])
    times = iter([0.0, 1.0, 3.0])
    gpu = NvmlBackend(nvml=fake, gpus=[0], sample_s=None, clock=lambda: next(times))  # samples at t=0
    assert gpu.methods == {"gpu:0": "measured:nvml-power-sampled"}
    assert "no energy counter" in gpu.note
    begin = gpu.snapshot()                 # t=1: 100 W for 1 s
    fake.power_mw[0] = 300_000
    end = gpu.snapshot()                   # t=3: trapezoid (100 + 300) / 2 W x 2 s
    (r,) = gpu.readings(begin, end, 2.0)
    assert r.energy_j == pytest.approx(400.0) and r.method == "measured:nvml-power-sampled"


def test_nvml_fallback_with_the_real_pynvml_exception_class():
    pynvml = pytest.importorskip("pynvml")

    class RealErrors(FakeNvml):
        NVMLError = pynvml.NVMLError
        NVMLError_NotSupported = pynvml.NVMLError_NotSupported

        def nvmlDeviceGetTotalEnergyConsumption(self, h):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # pynvml maps this to the subclass

    gpu = NvmlBackend(nvml=RealErrors([0]), gpus=[0], sample_s=None)
    assert gpu.methods == {"gpu:0": "measured:nvml-power-sampled"}


def test_nvml_sampler_thread_integrates_and_stops():
    fake = FakeNvml([None], power_mw=[40_000])
    gpu = NvmlBackend(nvml=fake, gpus=[0], sample_s=0.001)
    integrator = gpu._integrators["gpu:0"]
    done = threading.Event()
    for _ in range(2000):               # wait (bounded) until the thread has sampled at least once more
        if integrator.energy_j > 0:
            done.set()
            break
        done.wait(0.001)
    gpu.close()
    assert integrator.energy_j > 0 and gpu._thread is None


def test_nvml_init_failure_and_missing_module_are_notes(monkeypatch):
    fake = FakeNvml([0], init_error=FakeNvml.NVMLError(9))
    gpu = NvmlBackend(nvml=fake)
    assert not gpu.available and "cannot initialise" in gpu.note
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    gpu = NvmlBackend()
    assert not gpu.available and "nvidia-ml-py" in gpu.note


def test_nvml_other_counter_error_skips_that_gpu():
    fake = FakeNvml([FakeNvml.NVMLError(15), 7_000])
    gpu = NvmlBackend(nvml=fake, gpus=[0, 1])
    assert gpu.methods == {"gpu:1": "measured:nvml"} and "energy counter failed" in gpu.note


# --- estimate -------------------------------------------------------------------------------------

def test_estimate_is_cpu_seconds_times_w_per_core_and_gb_times_w_per_gb_times_time():
    cpu_s = iter([100.0, 103.5])
    rss = iter([4e9, 8e9])
    t = iter([10.0, 12.0])
    est = EstimateBackend(w_per_core=6.0, dram_w_per_gb=0.5, cpu_seconds=lambda: next(cpu_s),
                          rss_bytes=lambda: next(rss), clock=lambda: next(t))
    a, b = est.snapshot(), est.snapshot()
    got = {r.component: (r.energy_j, r.method) for r in est.readings(a, b, 2.0)}
    assert got["cpu"] == (pytest.approx(3.5 * 6.0), "estimated:cpu-tdp-per-core")
    assert got["dram"] == (pytest.approx((4 + 8) / 2 * 0.5 * 2.0), "estimated:dram-w-per-gb")
    assert "6.000 W/core" in est.note and "Crucial" in est.note


def test_estimate_counts_this_process_cpu_time():
    est = EstimateBackend(w_per_core=10.0, dram=False)
    outer0 = process_cpu_seconds()
    a = est.snapshot()
    x = 0
    for i in range(300_000):
        x += i * i
    b = est.snapshot()
    outer1 = process_cpu_seconds()
    (r,) = est.readings(a, b, 1.0)
    assert 0 < r.energy_j <= 10.0 * (outer1 - outer0) + 1e-9


def test_w_per_core_from_setting_env_table_or_table_median(monkeypatch):
    monkeypatch.delenv("POWERTRAIN_CPU_W_PER_CORE", raising=False)
    assert cpu_w_per_core("whatever", setting=7.5) == (7.5, "setting: 7.5 W per core")
    w, src = cpu_w_per_core("AMD EPYC 9654 96-Core Processor")
    assert w == 360 / 96 and "EPYC 9654" in src
    w, src = cpu_w_per_core("Intel(R) Xeon(R) Platinum 8480+")
    assert w == 350 / 56
    servers = sorted(r.tdp_w / r.cores for r in CPU_TDP if r.server)
    w, src = cpu_w_per_core("AMD EPYC")  # a VM's masked model name
    assert w == statistics.median(servers) and "not in the TDP table" in src
    monkeypatch.setenv("POWERTRAIN_CPU_W_PER_CORE", "3.25")
    assert cpu_w_per_core("AMD EPYC")[0] == 3.25


def test_estimate_components_can_be_chosen():
    assert list(EstimateBackend(w_per_core=1, cpu=False).snapshot()) == ["dram"]
    assert list(EstimateBackend(w_per_core=1, dram=False).snapshot()) == ["cpu"]


# --- sums never hide a mix ------------------------------------------------------------------------

def test_sum_of_measured_and_estimated_says_mixed():
    total = sum_energy([EnergyReading("cpu:package-0", 30.0, "measured:rapl"),
                        EnergyReading("dram", 2.0, "estimated:dram-w-per-gb"),
                        EnergyReading("gpu:0", 100.0, "measured:nvml")])
    assert total.energy_j == 132.0
    assert total.method == "mixed: measured:nvml + measured:rapl + estimated:dram-w-per-gb"
    same = sum_energy([EnergyReading("gpu:0", 1.0, "measured:nvml"), EnergyReading("gpu:1", 2.0, "measured:nvml")])
    assert same.method == "measured:nvml"
    assert combine_methods(["mixed: measured:rapl + estimated:x", "measured:rapl"]) == "mixed: measured:rapl + estimated:x"
    assert sum_energy([]).method == "none"


# --- idle baseline ---------------------------------------------------------------------------------

class ConstantPower(EnergyBackend):
    """A fake whole-device counter: energy = watts x (fake) time."""

    name = "const"

    def __init__(self, watts, clock):
        super().__init__()
        self.watts, self.clock = watts, clock
        self.methods = {"dev": "measured:fake"}

    def snapshot(self):
        return {"dev": self.watts * self.clock.now}


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def test_idle_power_and_energy_above_idle():
    clock = FakeClock()
    dev = ConstantPower(40.0, clock)
    idle = measure_idle_power([dev], duration_s=3.0, sleep=clock.sleep, clock=clock)
    assert idle == {"dev": pytest.approx(40.0)}
    (r,) = above_idle([EnergyReading("dev", 1000.0, "measured:fake")], idle, time_s=10.0)
    assert r.above_idle_j == pytest.approx(1000.0 - 400.0)
    (other,) = above_idle([EnergyReading("cpu", 5.0, "estimated:x")], idle, time_s=10.0)
    assert other.above_idle_j is None
    assert sum_energy([r, other]).above_idle_j is None


# --- detection ------------------------------------------------------------------------------------

def test_detect_uses_rapl_alone_when_it_covers_cpu_and_dram(tmp_path):
    zone(tmp_path, "intel-rapl:0", "package-0", 1)
    zone(tmp_path, "intel-rapl:0:0", "dram", 1)
    backends, notes = detect_backends(tmp_path, nvml=False)
    assert [b.name for b in backends] == ["rapl"] and notes == []
    [b.close() for b in backends]


def test_detect_estimates_what_rapl_does_not_cover(tmp_path):
    zone(tmp_path, "intel-rapl:0", "package-0", 1)
    backends, notes = detect_backends(tmp_path, nvml=False, w_per_core=5.0)
    assert [b.name for b in backends] == ["rapl", "estimate"]
    assert list(backends[1].methods) == ["dram"]
    [b.close() for b in backends]


def test_detect_without_counters_is_a_labelled_estimate(tmp_path):
    backends, notes = detect_backends(tmp_path / "none", nvml=False, w_per_core=5.0)
    assert [b.name for b in backends] == ["estimate"]
    assert set(backends[0].methods.values()) == {"estimated:cpu-tdp-per-core", "estimated:dram-w-per-gb"}
    assert any(n.startswith("RAPL") for n in notes) and any("estimated" in n for n in notes)


def test_detect_includes_nvml_when_it_initialises(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    backends, _ = detect_backends(tmp_path, nvml=FakeNvml([1, 2]), w_per_core=5.0)
    assert [b.name for b in backends] == ["nvml", "estimate"]
    assert list(backends[0].methods) == ["gpu:0", "gpu:1"]


def test_process_rss_matches_proc_status():
    from powertrain.measure.energy.estimate import process_rss_bytes

    def vmrss():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    before, ours, after = vmrss(), process_rss_bytes(), vmrss()
    assert min(before, after) - (4 << 20) <= ours <= max(before, after) + (4 << 20)


def test_nvml_close_shuts_nvml_down_once():
    class Counting(FakeNvml):
        shutdowns = 0

        def nvmlShutdown(self):
            Counting.shutdowns += 1

    gpu = NvmlBackend(nvml=Counting([1]), gpus=[0])
    gpu.close()
    gpu.close()
    assert Counting.shutdowns == 1
