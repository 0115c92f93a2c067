"""The bill: FLOPs against an analytic count, estimated energy labelled, totals across resume,
re-carboned bills, compare's Pareto plot, and the planner's arithmetic."""
import json
import math
import subprocess
import sys

import pytest

from powertrain.measure import grid_intensity

import powertrain
from powertrain import Callback
from powertrain.measure import EnergyBackend, EstimateBackend, Meter
from powertrain.study.plan import chinchilla, plan
from powertrain.report.compare import pareto_front

ARGS = ["train.epochs=2", "train.checkpoint_every_steps=5", "train.device=cpu"]  # a CPU's bill: its measured peak,
# its estimated energy, a plan calibrated from a CPU run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return powertrain.train("digits-mlp", ARGS, out=tmp_path_factory.mktemp("b") / "run", callbacks=[])


def test_bill_written_with_labelled_estimate_and_measured_peak(digits_run):
    bill = json.loads((digits_run.dir / "bill.json").read_text())
    assert bill == json.loads(json.dumps(digits_run.bill))
    e = bill["energy"]
    assert e["total_j"] > 0 and all(c["method"].startswith(("estimated:", "measured:")) for c in e["components"].values())
    if all(c["method"].startswith("estimated:") for c in e["components"].values()):
        assert "estimated" in e["method"]
    assert bill["mfu"]["peak"]["source"].startswith("measured") and 0 < bill["mfu"]["value"] < 1
    assert bill["co2e_g"] == pytest.approx(e["total_j"] / 3.6e6 * 481)
    assert bill["time_s"]["fit"] >= bill["time_s"]["forward_backward"] + bill["time_s"]["optimizer"]
    assert bill["j_per_inference_sample"] < bill["j_per_train_sample"]


def test_training_flops_match_analytic_count(digits_run):
    """MLP 64-256-128-10: forward 2·W per sample; backward 2·W for weight grads plus 2·W for input
    grads of every layer but the first (the data needs no gradient). Biases are not matmuls."""
    widths = [64, 256, 128, 10]
    w = [a * b for a, b in zip(widths[:-1], widths[1:])]
    per_sample = 2 * sum(w) + 2 * sum(w) + 2 * sum(w[1:])
    bill = digits_run.bill
    assert bill["flops"]["per_sample_forward"] == 2 * sum(w)
    assert bill["flops"]["train_total"] == per_sample * bill["samples_trained"]
    assert bill["samples_trained"] == 2 * len(digits_run.trainer.data.train)


class StopAt(Callback):
    def on_step_end(self, trainer, loss):
        if trainer.step == 17:
            raise KeyboardInterrupt


def test_resumed_bill_covers_the_whole_run(digits_run, tmp_path):
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        powertrain.train("digits-mlp", ARGS, out=out, callbacks=[StopAt()])
    resumed = powertrain.resume(out, callbacks=[]).bill
    whole = digits_run.bill
    assert resumed["flops"]["train_total"] == whole["flops"]["train_total"]
    assert resumed["samples_trained"] == whole["samples_trained"] and resumed["steps"] == whole["steps"]
    fit = resumed["energy"]["windows"]["fit"]
    assert fit["count"] >= 2 and fit["flops"] == whole["flops"]["train_total"]  # segments before and after


class FakeGpu(EnergyBackend):
    """A replayed counter: 100 J per snapshot."""
    name = "fakegpu"

    def __init__(self):
        super().__init__()
        self.methods = {"gpu0": "measured:nvml"}
        self.j = 0.0

    @property
    def available(self):
        return True

    def snapshot(self):
        self.j += 100.0
        return {"gpu0": self.j}


def test_measured_and_estimated_are_never_summed_unlabelled(tiny_digits):
    from powertrain import TrainConfig, Trainer, models
    meter = Meter([FakeGpu(), EstimateBackend(w_per_core=4.0)])
    model = models.build({"name": "mlp", "hidden": [8]}, tiny_digits.meta)
    t = Trainer(model, tiny_digits, TrainConfig(max_steps=3), callbacks=[], meter=meter).fit()
    t.evaluate("test")
    bill = t.bill()
    assert bill["energy"]["method"].startswith("mixed: measured:nvml + estimated:")
    assert bill["energy"]["components"]["gpu0"]["method"] == "measured:nvml"


def test_bill_cli_recarbons(digits_run):
    base = subprocess.run([sys.executable, "-m", "powertrain", "bill", str(digits_run.dir), "--json"],
                          capture_output=True, text=True, timeout=120)
    fr = subprocess.run([sys.executable, "-m", "powertrain", "bill", str(digits_run.dir), "--json", "--region", "france",
                         "--pue", "1.5", "--price-per-kwh", "0.25"], capture_output=True, text=True, timeout=120)
    assert base.returncode == 0 and fr.returncode == 0, fr.stderr
    b, f = json.loads(base.stdout), json.loads(fr.stdout)
    kwh = b["energy"]["total_j"] / 3.6e6 * 1.5
    france = grid_intensity("france")  # CodeCarbon's figure when it is installed, ours (56) otherwise
    assert f["co2e_g"] == pytest.approx(kwh * france.g_per_kwh) and f["cost"]["amount"] == pytest.approx(kwh * 0.25)
    assert f["energy"]["carbon"]["intensity"]["source"] == france.source and round(france.g_per_kwh) == 56
    table = subprocess.run([sys.executable, "-m", "powertrain", "bill", str(digits_run.dir)], capture_output=True,
                           text=True, timeout=120).stdout
    assert "ESTIMATED" in table or "measured" in table
    assert "MFU" in table and "physical floor" in table


def test_pareto_front():
    assert pareto_front([(1, 0.5), (2, 0.9), (3, 0.8), (2, 0.9)]) == [0, 1, 3]
    assert pareto_front([(5, 0.99), (1, 0.1)]) == [0, 1]
    assert pareto_front([(1, 0.5), (2, 0.9), (3, 0.1)], higher_is_better=False) == [0, 2]  # e.g. a loss


def test_compare_keeps_one_front_per_dataset(digits_run, tmp_path):
    """A 4/4 XOR run is cheaper and 'more accurate' than any digits run, but must not dominate them."""
    from powertrain.report.compare import compare, table

    xor = powertrain.train("xor", ["train.epochs=400", "train.device=cpu"], out=tmp_path / "x", callbacks=[]).dir
    rows, _ = compare([digits_run.dir, xor])
    assert [r["data"] for r in rows] == ["digits", "xor"]
    assert all(r.get("pareto_energy_j") and r.get("pareto_train_flops") for r in rows)
    assert "2 datasets" in table(rows, "accuracy")


def test_compare_writes_pareto_png(digits_run, tmp_path):
    runs = [digits_run.dir]
    for i, hidden in enumerate(([8], [32, 16])):
        runs.append(powertrain.train("digits-mlp", ["train.epochs=1", "train.device=cpu", f"model.hidden={hidden}"], out=tmp_path / f"c{i}",
                                     callbacks=[]).dir)
    png = tmp_path / "cmp.png"
    p = subprocess.run([sys.executable, "-m", "powertrain", "compare", *map(str, runs), "--png", str(png)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "pareto" in p.stdout and len(p.stdout.strip().splitlines()) == 6  # header, 3 runs, legend, path


def test_plan_arithmetic():
    p = plan(params=1e9, tokens=20e9, device="h100", count=8, mfu=0.5, region="france", price_per_kwh=0.1)
    assert p["flops"] == 6 * 1e9 * 20e9
    peak = 989.4e12
    assert p["time_s"] == pytest.approx(p["flops"] / (8 * peak * 0.5))
    assert p["energy_j"] == pytest.approx(8 * 700 * p["time_s"]) and "assumed" in p["energy_source"]
    assert p["co2e_g"] == pytest.approx(p["energy_j"] / 3.6e6 * grid_intensity("france").g_per_kwh) and p["cost"] == pytest.approx(p["energy_j"] / 3.6e6 * 0.1)
    c = chinchilla(6 * 70e9 * 1.4e12)
    assert c["params"] == pytest.approx(70e9 * math.sqrt(1.4e12 / 20 / 70e9)) and c["tokens"] == pytest.approx(20 * c["params"])


def test_plan_from_run_is_calibrated(digits_run):
    p = plan(params=1e6, tokens=1e8, device="h100", from_run=str(digits_run.dir))
    assert p["mfu"]["value"] == pytest.approx(digits_run.bill["mfu"]["value"]) and "measured" in p["mfu"]["source"]
    jpf = digits_run.bill["energy"]["total_j"] / digits_run.bill["flops"]["train_total"]
    assert any("transfer" in n for n in p["notes"]) and any("J/FLOP was measured on" in n for n in p["notes"])
    assert p["energy_j"] == pytest.approx(p["peak"]["rated_power_w"] * p["time_s"])  # a CPU's J/FLOP is not an H100's
    q = plan(params=1e6, tokens=1e8, device="cpu", from_run=str(digits_run.dir))
    assert q["energy_j"] == pytest.approx(6e14 * jpf)


def test_each_epoch_is_a_meter_window_logged_to_metrics(digits_run):
    """Two epochs: two 'epoch' windows whose FLOPs add up to the fit's training FLOPs."""
    records = [json.loads(line) for line in (digits_run.dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r.get("window") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and not any(r["partial"] for r in epochs)
    assert sum(r["flops"] for r in epochs) == digits_run.bill["flops"]["train_total"]
    assert all(r["time_s"] > 0 and r["energy_j"] > 0 and r["energy_method"] for r in epochs)
    assert digits_run.bill["energy"]["windows"]["epoch"]["count"] == 2

