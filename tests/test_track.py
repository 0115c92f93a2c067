"""`powertrain.track` on a plain PyTorch loop: an ordinary run directory whose training FLOPs equal a
Trainer's on the same model, batches and steps, and which `runs`, `compare`, `report`, `plan --from`
and `bill` read like any run."""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import powertrain
from powertrain import Trainer, TrainConfig
from powertrain.errors import ModelError
from powertrain.run.rundir import RunDir

N, D, B, EPOCHS = 100, 8, 32, 2  # 4 steps an epoch, the last of 4 samples


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    return x, (x[:, 0] > 0).long()


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    out = tmp_path_factory.mktemp("track") / "mine"
    x, y = data()
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with powertrain.track(model, out=out, log_every=2) as t:
        for _ in range(EPOCHS):
            for i in range(0, N, B):
                xb, yb = x[i:i + B], y[i:i + B]
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                t.step(samples=len(xb), loss=loss)
            model.eval()
            with torch.no_grad():
                t.evaluate("val", accuracy=(model(x).argmax(1) == y).float().mean())
            model.train()
        t.evaluate("test", accuracy=(model(x).argmax(1) == y).float().mean())  # grad on: still not training
    return out


def test_flops_equal_the_trainers(tracked):
    bill = RunDir(tracked).read("bill")
    x, y = data()
    trainer = Trainer(net(), (x, y), TrainConfig(epochs=EPOCHS, batch_size=B), callbacks=[], meter=False)
    expected = trainer.train_flops(0, trainer.total_steps)
    assert bill["steps"] == trainer.total_steps == 8 and bill["samples_trained"] == EPOCHS * N
    assert abs(bill["flops"]["train_total"] - expected) <= 0.01 * expected
    analytic = 3 * 2 * (D * 16 + 16 * 2)  # per sample: forward 2*MACs, backward twice that (the input needs none)
    assert bill["flops"]["train_total"] == analytic * EPOCHS * N - EPOCHS * N * 2 * D * 16  # no grad wrt the input
    assert bill["flops"]["per_sample_forward"] == trainer.forward_flops_per_sample
    assert bill["time_s"]["data"] is None and "not timed" in bill["time_s"]["phases_note"]
    assert bill["energy"]["total_j"] > 0 and bill["energy"]["method"]


def test_run_directory_is_ordinary(tracked):
    run = RunDir.open(tracked)
    ev = run.read("eval")
    assert set(ev) >= {"val", "test", "stop_reason", "step"} and ev["step"] == 8
    lines = run.metrics()
    assert [r["step"] for r in lines if "loss" in r] == [2, 4, 6, 8]
    assert len([r for r in lines if "val" in r]) == EPOCHS
    assert run.kind == "trained" and run.recipe().model.name == "external"
    assert run.status()["state"] == "complete"


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "powertrain", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_every_reader_reads_it(tracked, tmp_path):
    for args in (["compare", str(tracked)], ["runs", str(tracked.parent), "--json"],
                 ["report", str(tracked), "--out", str(tmp_path / "r.html")], ["bill", str(tracked)],
                 ["plan", "--from", str(tracked), "--params", "1e6", "--device", "cpu"]):
        done = cli(*args, cwd=tmp_path)
        assert done.returncode == 0, (args, done.stderr)
    listed = json.loads(cli("runs", str(tracked.parent), "--json", cwd=tmp_path).stdout)
    assert any(r["recipe"] == "loop-Sequential" and r["state"] == "complete" for r in listed)
    err = cli("eval", str(tracked), cwd=tmp_path)
    assert err.returncode == 2 and err.stderr.count("\n") == 1 and "Traceback" not in err.stderr  # one line
    assert "outside powertrain; its weights are with that framework" in err.stderr


def test_a_failed_loop_leaves_no_bill(tmp_path):
    model = net()
    with pytest.raises(RuntimeError):
        with powertrain.track(model, out=tmp_path / "r") as t:
            model(torch.randn(4, D)).sum().backward()
            t.step(samples=4)
            raise RuntimeError("the loop broke")
    assert not (tmp_path / "r" / "bill.json").exists() and RunDir(tmp_path / "r").status()["state"] == "failed"
    with pytest.raises(ModelError, match="expected a torch.nn.Module"):
        powertrain.track(object(), out=tmp_path / "x").__enter__()
