"""The bill's headline says how its energy was obtained: ESTIMATED in capitals where no counter was read, the
share of the joules that a counter measured where one was (naming the counter and the estimated parts), and
'measured' where all were. Bills made by a real Meter over the fake NVML module and the fake powercap tree
of test_energy.py, with known joules; the share is computed here from those joules, not read from the bill."""
import re
from types import SimpleNamespace

import pytest

from measure.test_energy import FakeNvml, powercap, set_uj  # noqa: F401  (powercap: the fake RAPL tree, a fixture)
from powertrain.measure import Meter
from powertrain.measure.bill import BillRecord, energy_headline, energy_share, energy_summary, format_bill, make_bill
from powertrain.measure.energy import EstimateBackend, NvmlBackend, RaplBackend

CPU_S, W_PER_CORE = 2.5, 4.0  # the estimate: 2.5 CPU-seconds at 4 W a core = 10 J
RSS_GB, DRAM_W_PER_GB, WINDOW_S = 2.0, 0.5, 5.0  # DRAM: 2 GB resident for 5 s at 0.5 W/GB = 5 J


class Clock:
    def __init__(self):
        self.cpu_s, self.t = 100.0, 1000.0

    def advance(self):
        self.cpu_s += CPU_S
        self.t += WINDOW_S


def estimate(clock: Clock, dram: bool = True) -> EstimateBackend:
    return EstimateBackend(w_per_core=W_PER_CORE, dram_w_per_gb=DRAM_W_PER_GB, dram=dram,
                           cpu_seconds=lambda: clock.cpu_s, rss_bytes=lambda: int(RSS_GB * 1e9), clock=lambda: clock.t)


def bill_of(backends, during) -> dict:
    """A bill whose 'fit' window saw `during()` happen to the counters."""
    meter = Meter(backends)
    with meter.window("fit"):
        during()
    return make_bill(meter, BillRecord(params=1, steps=1, samples_trained=1))


def headline(bill: dict) -> str:
    first = format_bill(bill).splitlines()[0]
    assert first.startswith("bill  (") and first.endswith(")"), first
    return first[len("bill  ("):-1]


def test_no_measured_part_keeps_estimated_in_capitals():
    clock = Clock()
    bill = bill_of([estimate(clock)], clock.advance)
    total = CPU_S * W_PER_CORE + RSS_GB * DRAM_W_PER_GB * WINDOW_S
    assert bill["energy"]["total_j"] == pytest.approx(total)
    assert headline(bill) == "energy 15 J, ESTIMATED: no counter readable here; see notes"
    assert energy_share(bill["energy"])["share"] == 0.0 and energy_summary(bill["energy"], short=True) == "ESTIMATED"


def test_a_mixed_bill_states_the_measured_share_the_counter_and_the_estimated_parts(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    clock, nvml = Clock(), FakeNvml([1_000_000])
    gpu_j = 237.5

    def during():
        clock.advance()
        nvml.energy_mj[0] += int(gpu_j * 1000)

    bill = bill_of([NvmlBackend(nvml=nvml), estimate(clock)], during)
    measured_j, estimated_j = gpu_j, CPU_S * W_PER_CORE + RSS_GB * DRAM_W_PER_GB * WINDOW_S
    share = measured_j / (measured_j + estimated_j)  # 94.06%
    text = headline(bill)
    assert text == f"energy 252 J, {round(100 * share)}% measured (NVML); CPU and DRAM estimated", text
    assert int(re.search(r"(\d+)% measured", text).group(1)) == round(100 * share)
    assert "ESTIMATED" not in text
    assert energy_share(bill["energy"])["share"] == pytest.approx(share)
    assert bill["energy"]["method"].startswith("mixed: measured:nvml")  # the label in bill.json is unchanged


def test_a_share_that_rounds_to_100_or_0_says_so_without_claiming_all_or_none():
    def energy(gpu_j, cpu_j):
        return {"total_j": gpu_j + cpu_j, "components": {"gpu:0": {"energy_j": gpu_j, "method": "measured:nvml"},
                                                         "cpu": {"energy_j": cpu_j, "method": "estimated:cpu"}}}

    assert energy_summary(energy(999.0, 1.0)) == ">99% measured (NVML); CPU estimated"
    assert energy_summary(energy(1.0, 999.0)) == "<1% measured (NVML); CPU estimated"
    assert energy_summary(energy(990.0, 10.0)) == "99% measured (NVML); CPU estimated"


def test_an_all_measured_bill_names_its_counters(powercap, monkeypatch):  # noqa: F811
    root, z = powercap

    def during():
        set_uj(z["pkg0"], 1_000_000 + 12_500_000)   # +12.5 J
        set_uj(z["dram0"], 2_000_000 + 750_000)     # +0.75 J
        set_uj(z["pkg1"], 7_000_000 + 3_000_000)    # +3 J

    rapl = RaplBackend(root, poll_s=None)
    bill = bill_of([rapl], during)
    assert bill["energy"]["total_j"] == pytest.approx(16.25)
    assert headline(bill) == "energy 16.2 J, measured (RAPL)"
    assert energy_share(bill["energy"])["share"] == 1.0

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNvml([5_000])
    for name, uj in (("pkg0", 1_000_000), ("dram0", 2_000_000), ("pkg1", 7_000_000)):  # back to the start
        set_uj(z[name], uj)

    def both():
        during()
        nvml.energy_mj[0] += 100_000  # +100 J

    bill = bill_of([NvmlBackend(nvml=nvml), RaplBackend(root, poll_s=None)], both)
    assert headline(bill) == "energy 116 J, measured (NVML + RAPL)"


def test_a_bill_without_components_or_energy_reads_from_its_label():
    assert energy_headline({"total_j": None, "method": None}) == "energy not measured"
    assert energy_summary({"total_j": 5.0, "method": "estimated:cpu-tdp-per-core"}).startswith("ESTIMATED")
    assert energy_summary({"total_j": 5.0, "method": "measured:rapl"}) == "measured (RAPL)"
    assert energy_summary({"total_j": 5.0, "method": "mixed: measured:nvml + estimated:cpu-tdp-per-core"}) == \
        "partly measured (NVML); the rest estimated"


def test_the_html_report_says_it_in_the_same_words(monkeypatch):
    from powertrain.report.html import bill_html

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    clock, nvml = Clock(), FakeNvml([0])

    def during():
        clock.advance()
        nvml.energy_mj[0] += 85_000  # 85 J measured, 15 J estimated: 85%

    bill = bill_of([NvmlBackend(nvml=nvml), estimate(clock)], during)
    page = bill_html(SimpleNamespace(bill=bill, status={}, eval=None))
    assert "85% measured (NVML); CPU and DRAM estimated" in page and "ESTIMATED" not in page


def test_powertrain_runs_marks_estimated_and_partly_measured_energy(monkeypatch):
    """`powertrain runs`' energy column: '(est.)' only where no joule was measured, the measured share where
    part was, nothing where all was (the same bills as above, read back through the run listing)."""
    from powertrain.run.listing import _how

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    clock, nvml = Clock(), FakeNvml([0])

    def during():
        clock.advance()
        nvml.energy_mj[0] += 85_000

    mixed = energy_share(bill_of([NvmlBackend(nvml=nvml), estimate(clock)], during)["energy"])["share"]
    estimated = energy_share(bill_of([estimate(clock)], clock.advance)["energy"])["share"]
    assert (_how(mixed), _how(estimated), _how(1.0), _how(None)) == (" (85% meas.)", " (est.)", "", "")
    assert _how(0.9999) == " (99% meas.)"  # never rounds up to 'all measured'
