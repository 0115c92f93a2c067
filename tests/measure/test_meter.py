"""The Meter's windows against a fake clock and fake counters with known values."""
import threading

import pytest
import torch

from powertrain.measure import CarbonModel, EstimateBackend, Meter, grid_intensity
from powertrain.measure.energy import RaplBackend
from powertrain.measure.energy.base import EnergyBackend


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


class Counter(EnergyBackend):
    """A counter whose energy is watts x fake time, with a given method label."""

    def __init__(self, clock, watts=100.0, comp="gpu:0", method="measured:nvml", period=0.1):
        super().__init__()
        self.name, self.clock, self.watts = comp, clock, watts
        self.methods = {comp: method}
        self.update_period_s = {comp: period}

    def snapshot(self):
        return {next(iter(self.methods)): self.watts * self.clock.now}


def make_meter(**kw):
    clock = FakeClock()
    gpu = Counter(clock, 200.0, "gpu:0", "measured:nvml")
    cpu = Counter(clock, 50.0, "cpu", "estimated:cpu-tdp-per-core", period=0.01)
    return Meter([gpu, cpu], carbon=CarbonModel(grid_intensity(400), pue=1.5), clock=clock, **kw), clock


def test_window_time_energy_per_component_and_co2e():
    meter, clock = make_meter()
    meter.begin("train")
    clock.sleep(3.0)
    w = meter.end("train")
    assert w.name == "train" and w.time_s == pytest.approx(3.0) and w.flops is None
    assert {r.component: (r.energy_j, r.method) for r in w.energy} == {
        "gpu:0": (pytest.approx(600.0), "measured:nvml"), "cpu": (pytest.approx(150.0), "estimated:cpu-tdp-per-core")}
    assert w.energy_j == pytest.approx(750.0)
    assert w.energy_method == "mixed: measured:nvml + estimated:cpu-tdp-per-core"
    assert w.co2e_g == pytest.approx(750.0 / 3.6e6 * 1.5 * 400)
    assert w.flags == () and w.to_dict()["energy"][0]["component"] == "gpu:0"


def test_nested_windows_and_flops():
    meter, clock = make_meter()
    meter.begin("train")
    for _ in range(3):
        meter.begin("step")
        meter.add_flops(1_000)
        clock.sleep(1.0)
        meter.end("step", flops=5)
    clock.sleep(0.5)
    outer = meter.end("train")
    assert outer.flops == 3_000 and outer.time_s == pytest.approx(3.5)
    totals = meter.totals()
    assert totals["step"].count == 3 and totals["step"].flops == 3 * 1_005
    assert totals["step"].time_s == pytest.approx(3.0)
    assert totals["step"].energy["gpu:0"].energy_j == pytest.approx(600.0)
    assert totals["train"].energy_j == pytest.approx(3.5 * 250.0)


def test_stop_then_account_later_measures_up_to_the_stop():
    """A hot loop stops a window (clock and counters only) and accounts it later: the Window covers
    begin..stop, not the time until account, and enters the totals only when accounted."""
    meter, clock = make_meter()
    meter.begin("epoch")
    clock.sleep(2.0)
    stopped = meter.stop("epoch")
    assert "epoch" not in meter.totals() and "epoch" not in meter._open
    clock.sleep(5.0)  # other work before the accounting
    w = meter.account(stopped, flops=7)
    assert w.time_s == pytest.approx(2.0) and w.energy_j == pytest.approx(500.0) and w.flops == 7
    assert meter.totals()["epoch"].count == 1 and meter.totals()["epoch"].energy_j == pytest.approx(500.0)


def test_window_errors_name_the_problem():
    meter, _ = make_meter()
    meter.begin("eval")
    with pytest.raises(ValueError, match="already open"):
        meter.begin("eval")
    with pytest.raises(ValueError, match="'fit' is not open \\(open: eval\\)"):
        meter.end("fit")


def test_short_window_is_flagged_on_the_window():
    meter, clock = make_meter()
    meter.begin("tiny")
    clock.sleep(0.02)  # shorter than the 100 ms NVML period, longer than the 10 ms one
    w = meter.end("tiny")
    assert len(w.flags) == 1 and w.flags[0].startswith("gpu:0: window 20.0 ms is shorter")


def test_context_manager_records_even_when_the_body_raises():
    meter, clock = make_meter()
    with pytest.raises(RuntimeError):
        with meter.window("ckpt") as out:
            clock.sleep(2.0)
            raise RuntimeError("boom")
    assert out["window"].time_s == pytest.approx(2.0) and meter.totals()["ckpt"].count == 1


def test_totals_survive_a_resume_through_torch_load_weights_only(tmp_path):
    meter, clock = make_meter()
    meter.begin("train")
    meter.add_flops(10**12)
    clock.sleep(4.0)
    meter.end("train")
    torch.save({"meter": meter.state_dict()}, tmp_path / "ckpt.pt")

    resumed, clock2 = make_meter()
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["meter"])
    resumed.begin("train")
    resumed.add_flops(10**12)
    clock2.sleep(6.0)
    resumed.end("train")
    t = resumed.totals()["train"]
    assert t.count == 2 and t.flops == 2 * 10**12 and t.time_s == pytest.approx(10.0)
    assert t.energy["gpu:0"].energy_j == pytest.approx(2000.0) and t.energy_j == pytest.approx(2500.0)
    assert t.co2e_g == pytest.approx(2500.0 / 3.6e6 * 1.5 * 400)
    assert t.energy_method == "mixed: measured:nvml + estimated:cpu-tdp-per-core"
    with pytest.raises(ValueError, match="version"):
        resumed.load_state_dict({"version": 99})


def test_a_component_measured_in_one_run_and_estimated_in_another_is_labelled_mixed():
    clock = FakeClock()
    first = Meter([Counter(clock, 10.0, "cpu", "measured:rapl")], clock=clock)
    with first.window("train"):
        clock.sleep(1.0)
    second = Meter([Counter(clock, 10.0, "cpu", "estimated:cpu-tdp-per-core")], clock=clock)
    second.load_state_dict(first.state_dict())
    with second.window("train"):
        clock.sleep(1.0)
    assert second.totals()["train"].energy["cpu"].method == "mixed: measured:rapl + estimated:cpu-tdp-per-core"


def test_rapl_plus_estimate_window_is_labelled_mixed(tmp_path):
    pkg = tmp_path / "intel-rapl:0"
    pkg.mkdir()
    (pkg / "name").write_text("package-0\n")
    (pkg / "energy_uj").write_text("0\n")
    (pkg / "max_energy_range_uj").write_text("262143328850\n")
    ticks = iter([0.0, 2.0])
    rapl = RaplBackend(tmp_path, poll_s=None)
    dram = EstimateBackend(cpu=False, dram_w_per_gb=1.0, rss_bytes=lambda: 2e9, clock=lambda: next(ticks))
    meter = Meter([rapl, dram])
    meter.begin("train")
    (pkg / "energy_uj").write_text("30000000\n")
    w = meter.end("train")
    assert {r.component: r.method for r in w.energy} == {"cpu:package-0": "measured:rapl",
                                                         "dram": "estimated:dram-w-per-gb"}
    assert w.energy_j == pytest.approx(30.0 + 4.0)
    assert w.energy_method == "mixed: measured:rapl + estimated:dram-w-per-gb"


def test_idle_baseline_gives_energy_above_idle():
    meter, clock = make_meter()
    idle = meter.measure_idle(2.0, sleep=clock.sleep)
    assert idle == {"gpu:0": pytest.approx(200.0), "cpu": pytest.approx(50.0)}
    meter.backends[0].watts = 350.0  # busy
    meter.begin("train")
    clock.sleep(4.0)
    w = meter.end("train")
    gpu = next(r for r in w.energy if r.component == "gpu:0")
    assert gpu.energy_j == pytest.approx(1400.0) and gpu.above_idle_j == pytest.approx(1400.0 - 800.0)
    assert w.above_idle_j == pytest.approx(600.0 + 0.0)
    assert meter.totals()["train"].energy["gpu:0"].above_idle_j == pytest.approx(600.0)


def test_cuda_is_synchronised_at_both_edges(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: calls.append(1))
    meter, _ = make_meter(sync_cuda=True)
    with meter.window("step"):
        assert len(calls) == 1
    assert len(calls) == 2
    auto, _ = make_meter()  # sync_cuda=None: only once CUDA is initialised (never on this CPU)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    with auto.window("step"):
        pass
    assert len(calls) == 2


def test_default_meter_on_this_machine_uses_the_labelled_estimate():
    """No GPU, no /sys/class/powercap here: the defaults give an estimate that says so."""
    meter = Meter()
    threads = threading.active_count()
    with meter.window("fit") as out:
        sum(i * i for i in range(50_000))
    assert threading.active_count() == threads  # no helper threads or processes for the estimate
    w = out["window"]
    assert all(r.method.startswith(("estimated:", "measured:")) for r in w.energy)
    if not any(r.method.startswith("measured:") for r in w.energy):
        assert w.energy_method.startswith(("estimated:", "mixed: estimated:"))
        assert any("estimated" in n for n in meter.describe()["notes"])
    assert w.co2e_g is not None and meter.describe()["carbon"]["intensity"]["region"] == "world"
    meter.close()
