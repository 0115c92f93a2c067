"""train.precision=auto on a CPU: a measured probe picks bf16 only where it is faster (here with a fake
timer, both ways), the choice is recorded (bill, checkpoint) and said, the probe leaves the
run's weights and RNG untouched, and a resumed run uses the recorded precision without probing again."""
import io
import json

import pytest
import torch
from safetensors.torch import load_file

import powertrain
from powertrain import Trainer
from powertrain.train import precision as autoprecision
from powertrain.api import load_trainer
from powertrain.train.callbacks import Progress
from powertrain.data import DataBundle
from powertrain.recipe import TrainConfig
from powertrain.run.rundir import RunDir
from interrupt import InterruptAt  # tests/interrupt.py

ARGS = ["train.epochs=2", "train.checkpoint_every_steps=5", "train.log_every=4",  # digits-mlp: dropout, 21 steps/epoch
        "train.device=cpu"]  # the probe is the CPU's: on a GPU 'auto' is bf16 by the hardware, never probed


def fake_steps(fp32_s: float, bf16_s: float, spikes=()):
    """A step function and a clock: each step(bf16) advances the clock by its precision's time, plus
    any spike listed for that call (load on the machine)."""
    t, calls = [0.0], []

    def step(bf16):
        calls.append(bf16)
        t[0] += (bf16_s if bf16 else fp32_s) + (spikes[len(calls) - 1] if len(calls) - 1 < len(spikes) else 0.0)

    return step, (lambda: t[0]), calls


@pytest.mark.parametrize("fp32_s, bf16_s, expected", [(1.0, 0.7, "bf16"), (1.0, 0.95, "fp32"), (1.0, 1.3, "fp32")])
def test_probe_decides_by_the_measured_ratio(fp32_s, bf16_s, expected):
    step, clock, calls = fake_steps(fp32_s, bf16_s)
    speedup = autoprecision.probe_speedup(step, clock=clock, budget_s=0.0, min_pairs=3)
    assert speedup == pytest.approx(fp32_s / bf16_s)
    assert calls == [False, True] * 3  # alternating, the least number of pairs when the budget allows no more
    precision, note = autoprecision.decide(speedup)
    assert precision == expected and note.startswith(expected)
    assert f"{fp32_s / bf16_s:.2f}x" in note


def test_probe_takes_the_median_of_each_and_fills_its_budget():
    # load slows the first fp32 step by 5 s and the 4th bf16 step by 1 s: the medians ignore both;
    # pairs go on past the 3 at least until 6.5 s are spent: 0.15 s a pair + 6 s of spikes, after the 4th pair
    step, clock, calls = fake_steps(0.1, 0.05, spikes=[5.0, 0, 0, 0, 0, 0, 0, 1.0])
    speedup = autoprecision.probe_speedup(step, clock=clock, budget_s=6.5, min_pairs=3)
    assert speedup == pytest.approx(2.0)
    assert calls == [False, True] * 4
    step, clock, calls = fake_steps(0.1, 0.05)
    autoprecision.probe_speedup(step, clock=clock, budget_s=100.0, max_pairs=7)
    assert len(calls) == 14  # at most max_pairs


def force_probe(monkeypatch, fp32_s: float, bf16_s: float) -> list:
    """The real probe (the model's real steps) under a fake timer, on any CPU, for runs of any length."""
    real, used = autoprecision.probe_speedup, []
    monkeypatch.setattr(autoprecision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(autoprecision, "SHORT_RUN_S", 0.0)

    def probe(step, **kw):
        fake_step, clock, calls = fake_steps(fp32_s, bf16_s)
        used.append(calls)
        return real(lambda bf16: (step(bf16), fake_step(bf16)), clock=clock, budget_s=0.0, min_pairs=3)

    monkeypatch.setattr(autoprecision, "probe_speedup", probe)
    return used


def weights(run) -> dict:
    return load_file(str(RunDir(run).list_checkpoints()[-1] / "model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def explicit(tmp_path_factory):
    """digits-mlp trained with train.precision=fp32 and =bf16 given explicitly."""
    root = tmp_path_factory.mktemp("explicit")
    for p in ("fp32", "bf16"):
        powertrain.train("digits-mlp", [*ARGS, f"train.precision={p}"], out=root / p, callbacks=[])
    return {p: weights(root / p) for p in ("fp32", "bf16")}


@pytest.mark.parametrize("bf16_s, expected", [(0.5, "bf16"), (1.0, "fp32")])
def test_auto_trains_as_the_precision_it_chose_and_records_it(explicit, tmp_path, monkeypatch, bf16_s, expected):
    used = force_probe(monkeypatch, 1.0, bf16_s)
    stream = io.StringIO()
    run = powertrain.train("digits-mlp", ARGS, out=tmp_path / "run", callbacks=[Progress(stream)]).dir
    assert len(used) == 1 and len(used[0]) == 6
    assert not same(explicit["fp32"], explicit["bf16"])  # the two precisions give different weights ...
    assert same(weights(run), explicit[expected])  # ... and the probe changed nothing else: same RNG, same init
    bill = json.loads((run / "bill.json").read_text())
    assert bill["device"]["precision"] == expected
    assert bill["device"]["precision_auto"] == autoprecision.decide(1.0 / bf16_s)[1]
    assert stream.getvalue().splitlines()[0] == f"precision: {bill['device']['precision_auto']}"
    assert bill["time_s"]["precision_probe"] > 0  # billed inside fit, and apart from the steps
    assert bill["energy"]["windows"]["precision_probe"]["time_s"] == bill["time_s"]["precision_probe"]
    trainer = load_trainer(RunDir(run))  # eval of the finished run: in the precision it trained in
    assert trainer.precision == expected and trainer.precision_note == bill["device"]["precision_auto"]
    assert powertrain.evaluate(run)["loss"] == pytest.approx(json.loads((run / "eval.json").read_text())["test"]["loss"],
                                                              rel=1e-6)


def test_resume_uses_the_recorded_precision_and_does_not_probe_again(explicit, tmp_path, monkeypatch):
    force_probe(monkeypatch, 1.0, 0.5)  # bf16
    out = tmp_path / "run"
    with pytest.raises(powertrain.Interrupted):
        powertrain.train("digits-mlp", ARGS, out=out, callbacks=[InterruptAt(13)])
    state = torch.load(RunDir(out).list_checkpoints()[-1] / "state.pt", weights_only=True)
    assert state["trainer"]["precision"]["precision"] == "bf16"

    def no_probe(*a, **kw):
        raise AssertionError("resume probed again")

    monkeypatch.setattr(autoprecision, "probe_speedup", no_probe)
    resumed = powertrain.resume(out, callbacks=[])
    assert resumed.trainer.precision == "bf16"
    assert same(weights(out), explicit["bf16"])  # bit-equal to the uninterrupted run


def test_a_checkpoint_from_before_the_probe_resumes_in_fp32():
    x = torch.randn(64, 4)
    t = Trainer(torch.nn.Linear(4, 2), DataBundle.from_tensors((x, (x[:, 0] > 0).long())),
                TrainConfig(epochs=1, device="cpu"),
                callbacks=[], meter=False)
    assert t._precision_pending and t.precision == "fp32"
    state = t.state_dict()
    del state["trainer"]["precision"]
    t.load_state_dict(state)
    assert not t._precision_pending and t.precision == "fp32" and "before the CPU probe" in t.precision_note


def test_no_probe_for_a_short_run_or_without_native_bf16(monkeypatch):
    x = torch.randn(64, 4)
    data = DataBundle.from_tensors((x, (x[:, 0] > 0).long()))
    monkeypatch.setattr(autoprecision, "probe_speedup", lambda *a, **kw: pytest.fail("probed"))
    monkeypatch.setattr(autoprecision, "cpu_has_native_bf16", lambda: True)
    t = Trainer(torch.nn.Linear(4, 2), data, TrainConfig(epochs=1, device="cpu"), callbacks=[], meter=False).fit()
    assert t.precision == "fp32" and "a short run" in t.precision_note
    monkeypatch.setattr(autoprecision, "cpu_has_native_bf16", lambda: False)
    t = Trainer(torch.nn.Linear(4, 2), data, TrainConfig(epochs=1, device="cpu"), callbacks=[], meter=False).fit()
    assert t.precision == "fp32" and "no native bf16" in t.precision_note
    t = Trainer(torch.nn.Linear(4, 2), data, TrainConfig(epochs=1, precision="fp32", device="cpu"), callbacks=[], meter=False).fit()
    assert t.precision == "fp32" and t.precision_note is None  # asked for: nothing to decide
