"""powertrain.integrations.lightning.BillCallback in a tiny real Lightning fit: an ordinary run
directory, training FLOPs equal to a powertrain Trainer's on the same model, batches and steps (within
1%), read by `compare` and `report`."""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from powertrain import Trainer, TrainConfig  # noqa: E402
from powertrain.integrations.lightning import BillCallback  # noqa: E402
from powertrain.run.rundir import RunDir  # noqa: E402

N, D, B, EPOCHS = 100, 8, 32, 2


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    return x, (x[:, 0] > 0).long()


def net():
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, 2))


class Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = net()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, idx):
        x, y = batch
        self.log("val_accuracy", (self(x).argmax(1) == y).float().mean())

    def test_step(self, batch, idx):
        x, y = batch
        self.log("test_accuracy", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pl") / "run"
    x, y = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=B)
    trainer = pl.Trainer(max_epochs=EPOCHS, callbacks=[BillCallback(out=out)], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", log_every_n_steps=2)
    model = Module()
    trainer.fit(model, loader, loader)
    trainer.test(model, loader, verbose=False)
    return out


def test_flops_equal_the_trainers(run_dir):
    bill = RunDir(run_dir).read("bill")
    t = Trainer(net(), data(), TrainConfig(epochs=EPOCHS, batch_size=B), callbacks=[], meter=False)
    expected = t.train_flops(0, t.total_steps)
    assert bill["steps"] == t.total_steps and bill["samples_trained"] == EPOCHS * N
    assert abs(bill["flops"]["train_total"] - expected) <= 0.01 * expected
    assert bill["device"]["framework"] == "lightning" and bill["energy"]["total_j"] > 0


def test_eval_json_and_readers(run_dir, tmp_path):
    ev = RunDir(run_dir).read("eval")
    assert 0 <= ev["val"]["accuracy"] <= 1 and 0 <= ev["test"]["accuracy"] <= 1 and ev["step"] == 8
    for args in (["compare", str(run_dir)], ["report", str(run_dir), "--out", str(tmp_path / "r.html")]):
        done = subprocess.run([sys.executable, "-m", "powertrain", *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stderr
    assert json.loads((run_dir / "bill.json").read_text())["steps"] == 8
