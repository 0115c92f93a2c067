"""powertrain.integrations.keras.BillCallback in a tiny real Keras 3 fit (torch backend): an ordinary run
directory, training FLOPs equal to a powertrain Trainer's on the same layers, batches and steps (within
1%), read by `compare` and `report`."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip("keras was imported with another backend", allow_module_level=True)

from powertrain import Trainer, TrainConfig  # noqa: E402
from powertrain.integrations.keras import BillCallback  # noqa: E402
from powertrain.run.rundir import RunDir  # noqa: E402

N, D, B, EPOCHS = 100, 8, 32, 2


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    return x, (x[:, 0] > 0).long()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras") / "run"
    x, y = (t.numpy() for t in data())
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = BillCallback(out=out)
    model.fit(x, y, batch_size=B, epochs=EPOCHS, validation_data=(x, y), callbacks=[cb], verbose=0, shuffle=False)
    model.evaluate(x, y, batch_size=B, callbacks=[cb], verbose=0)
    return out


def test_flops_equal_the_trainers(run_dir):
    bill = RunDir(run_dir).read("bill")
    t = Trainer(nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, 2)), data(),
                TrainConfig(epochs=EPOCHS, batch_size=B), callbacks=[], meter=False)
    expected = t.train_flops(0, t.total_steps)
    assert bill["steps"] == t.total_steps and bill["samples_trained"] == EPOCHS * N
    assert abs(bill["flops"]["train_total"] - expected) <= 0.01 * expected
    assert bill["device"]["framework"] == "keras"


def test_eval_json_and_readers(run_dir, tmp_path):
    ev = RunDir(run_dir).read("eval")
    assert ev["test"]["accuracy"] == pytest.approx(ev["val"]["accuracy"])  # the same rows and weights
    for args in (["compare", str(run_dir)], ["report", str(run_dir), "--out", str(tmp_path / "r.html")]):
        done = subprocess.run([sys.executable, "-m", "powertrain", *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stderr
