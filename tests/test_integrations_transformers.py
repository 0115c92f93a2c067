"""powertrain.integrations.transformers.BillCallback in a tiny real Hugging Face Trainer fit: an ordinary
run directory, training FLOPs equal to a powertrain Trainer's on the same model, batches and steps
(within 1%), read by `compare` and `report`."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from powertrain import Trainer, TrainConfig  # noqa: E402
from powertrain.integrations.transformers import BillCallback  # noqa: E402
from powertrain.run.rundir import RunDir  # noqa: E402

N, D, B, EPOCHS = 100, 8, 32, 2


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    return x, (x[:, 0] > 0).long()


def net():
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, 2))


class Model(nn.Module):
    """What the HF Trainer calls: model(**batch) -> {"loss", "logits"}."""

    def __init__(self):
        super().__init__()
        self.net = net()

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class Rows(Dataset):
    def __init__(self):
        self.x, self.y = data()

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    args = transformers.TrainingArguments(output_dir=str(tmp / "hf"), per_device_train_batch_size=B,
                                          per_device_eval_batch_size=B, num_train_epochs=EPOCHS, logging_steps=2,
                                          eval_strategy="epoch", save_strategy="no", report_to=[], use_cpu=True,
                                          disable_tqdm=True, learning_rate=0.1, dataloader_drop_last=False)
    trainer = transformers.Trainer(model=Model(), args=args, train_dataset=Rows(), eval_dataset=Rows(),
                                   callbacks=[BillCallback(out=tmp / "run")])
    trainer.train()
    trainer.evaluate()
    return tmp / "run"


def test_flops_equal_the_trainers(run_dir):
    bill = RunDir(run_dir).read("bill")
    t = Trainer(net(), data(), TrainConfig(epochs=EPOCHS, batch_size=B), callbacks=[], meter=False)
    expected = t.train_flops(0, t.total_steps)
    assert bill["steps"] == t.total_steps and bill["samples_trained"] == EPOCHS * N
    assert abs(bill["flops"]["train_total"] - expected) <= 0.01 * expected
    assert bill["device"]["framework"] == "transformers"


def test_eval_json_and_readers(run_dir, tmp_path):
    ev = RunDir(run_dir).read("eval")
    assert ev["val"]["loss"] > 0 and ev["test"]["loss"] == pytest.approx(ev["val"]["loss"])  # same rows, same weights
    assert [r["step"] for r in RunDir(run_dir).metrics() if "val" in r] == [4, 8]
    for args in (["compare", str(run_dir), "--metric", "loss"], ["report", str(run_dir), "--out", str(tmp_path / "r.html")]):
        done = subprocess.run([sys.executable, "-m", "powertrain", *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stderr
