"""DP-SGD (train.privacy): one step against a hand computation (per-sample clipping, the noise draw, the
mean over the expected batch), epsilon against Opacus's accountant computed here from (sigma, q, steps),
a resumed private run equal to an uninterrupted one, Opacus's layer fixes noted (BatchNorm, GRU) or
refused in one line, Poisson batches that may be empty, and the one-line refusals."""
import json
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

pytest.importorskip("opacus")

import powertrain  # noqa: E402
from powertrain import DataBundle, TrainConfig  # noqa: E402
from powertrain.cli import main  # noqa: E402
from powertrain.errors import RecipeError  # noqa: E402
from powertrain.train.privacy import PoissonSplit, PrivateTrainer, private_model  # noqa: E402
from powertrain.run.rundir import RunDir  # noqa: E402
from interrupt import InterruptAt  # tests/interrupt.py

QUICK = ["train.epochs=2", "train.batch_size=128", "train.log_every=5", "train.device=cpu", "data.test_fraction=0.5"]


def test_one_dp_sgd_step_against_a_hand_computation():
    """Clip each sample's gradient to C, sum, add N(0, (sigma C)^2) per weight, divide by the expected
    batch size, take an SGD step: the same bits as a loop written out here."""
    torch.manual_seed(0)
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    model = nn.Linear(5, 3)
    cfg = TrainConfig(epochs=1, batch_size=8, optimizer="sgd", lr=0.5, device="cpu",
                      privacy={"noise_multiplier": 0.7, "max_grad_norm": 0.3})
    t = PrivateTrainer(model, DataBundle.from_tensors((x, y)), cfg, callbacks=[], meter=False)
    w0 = {k: v.clone() for k, v in model.named_parameters()}
    batch = (x[:6], y[:6])  # a Poisson batch of 6 where 8 are expected
    t._attach()
    torch.manual_seed(123)
    t.train_step(batch)
    t._detach()

    grads = []  # per-sample gradients, one backward per sample
    for i in range(6):
        ref = nn.Linear(5, 3)
        ref.load_state_dict(w0)
        nn.functional.cross_entropy(ref(x[i:i + 1]), y[i:i + 1]).backward()
        g = torch.cat([ref.weight.grad.flatten(), ref.bias.grad.flatten()])
        grads.append(g * min(1.0, 0.3 / (g.norm() + 1e-6)))
    total = torch.stack(grads).sum(0)
    torch.manual_seed(123)  # Opacus draws the noise parameter by parameter, in order
    noise = torch.cat([torch.normal(0, 0.7 * 0.3, size=p.shape).flatten() for p in (w0["weight"], w0["bias"])])
    update = (total + noise) / 8
    expected = torch.cat([w0["weight"].flatten(), w0["bias"].flatten()]) - 0.5 * update
    got = torch.cat([model.weight.detach().flatten(), model.bias.detach().flatten()])
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.fixture(scope="module")
def private_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp") / "run"
    run = powertrain.train("digits-mlp", [*QUICK, "train.privacy.epsilon=2", "train.privacy.delta=1e-4"],
                           out=out, callbacks=[])
    return run


def test_epsilon_against_opacus_accountant_computed_here(private_run):
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    p = private_run.bill["privacy"]
    n = p["train_samples"]
    q, steps = 128 / n, private_run.bill["steps"]
    assert p["sample_rate"] == pytest.approx(q) and steps == 2 * -(-n // 128) == 14
    sigma = get_noise_multiplier(target_epsilon=2.0, target_delta=1e-4, sample_rate=q, steps=steps, accountant="rdp",
                                 epsilon_tolerance=0.01)
    assert p["noise_multiplier"] == pytest.approx(sigma)
    acc = RDPAccountant()
    acc.history = [(sigma, q, steps)]
    assert p["epsilon"] == pytest.approx(acc.get_epsilon(delta=1e-4), rel=1e-9)
    assert 1.9 < p["epsilon"] <= 2.0
    per_epoch = [r for r in RunDir(private_run.dir).metrics() if "privacy" in r]
    assert [r["epoch"] for r in per_epoch] == [1, 2]
    acc.history = [(sigma, q, steps // 2)]
    assert per_epoch[0]["privacy"]["epsilon"] == pytest.approx(acc.get_epsilon(delta=1e-4), rel=1e-9)
    assert per_epoch[1]["privacy"]["epsilon"] == pytest.approx(p["epsilon"])
    # Poisson batches: about q * n samples each; the bill's samples are those drawn
    assert p["samples_drawn"] == private_run.bill["samples_trained"]
    assert abs(p["samples_drawn"] / steps - 128) < 4 * 128 ** 0.5
    # the per-sample gradients' FLOPs are on the bill, above a plain step's
    assert p["cost"]["flops_ratio"] > 1.1
    assert private_run.bill["flops"]["train_total"] == p["samples_drawn"] * p["cost"]["flops_per_sample_train"]


def test_resumed_private_run_equals_an_uninterrupted_one(private_run, tmp_path):
    out = tmp_path / "run"
    args = [*QUICK, "train.privacy.epsilon=2", "train.privacy.delta=1e-4"]
    with pytest.raises(powertrain.Interrupted):
        powertrain.train("digits-mlp", args, out=out, callbacks=[InterruptAt(6)])
    resumed = powertrain.resume(out, callbacks=[])
    a, b = (load_file(str(RunDir(d).list_checkpoints()[-1] / "model.safetensors")) for d in (private_run.dir, out))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.bill["privacy"]["epsilon"] == private_run.bill["privacy"]["epsilon"]
    assert resumed.bill["privacy"]["samples_drawn"] == private_run.bill["privacy"]["samples_drawn"]

    def lines(d):
        return [{k: v for k, v in json.loads(line).items() if k != "samples_per_s"}
                for line in (d / "metrics.jsonl").read_text().splitlines() if "window" not in line]
    assert lines(private_run.dir) == lines(out)


def test_batchnorm_and_gru_replaced_with_a_note(tmp_path, capsys):
    run = powertrain.train("digits-cnn", ["model.conv=[4]", "model.pool=[2]", "model.dense=[8]", "train.max_steps=2",
                                          "train.privacy.noise_multiplier=1.0", "train.device=cpu",
                                          "data.test_fraction=0.5"], out=tmp_path / "bn", callbacks=[])
    changes = run.bill["privacy"]["model_changes"]
    assert changes == ["layer '1': BatchNorm2d -> GroupNorm(4 groups of 1 channels)"]
    assert "BatchNorm2d -> GroupNorm" in capsys.readouterr().err
    assert powertrain.evaluate(run.dir)["loss"] == pytest.approx(run.metrics["test"]["loss"], rel=1e-5)
    from powertrain import data, load_recipe, models

    r = load_recipe("mnist1d-gru", ["model.hidden=8"])
    gru = models.build(r.model.model_dump(), data.build(r.data.model_dump(), seed=0).meta)
    fixed, notes = private_model(gru)
    assert any("GRU -> DPGRU" in n for n in notes)
    assert set(dict(fixed.named_parameters())) == set(dict(gru.named_parameters()))  # same names: checkpoints load


def test_a_layer_opacus_cannot_train_is_refused_naming_it():
    class WithBuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)
            self.scale = nn.Parameter(torch.ones(2))
            self.register_buffer("running", torch.zeros(2))

        def forward(self, x):
            return self.lin(x) * self.scale + self.running

    with pytest.raises(RecipeError, match="layer 'model' .WithBuffer. has trainable weights and buffers .running."):
        private_model(WithBuffer())


def test_empty_poisson_batches_step_with_noise_only_and_the_prv_accountant():
    from opacus.accountants import PRVAccountant

    torch.manual_seed(0)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    cfg = TrainConfig(epochs=6, batch_size=1, device="cpu", privacy={"noise_multiplier": 1.0, "accountant": "prv"})
    t = PrivateTrainer(nn.Linear(3, 2), DataBundle.from_tensors((x, y)), cfg, callbacks=[], meter=False).fit()
    assert 0 in t._batch_sizes and len(t._batch_sizes) == t.step == 24
    p = t.bill()["privacy"]
    assert p["samples_drawn"] == sum(t._batch_sizes)
    prv = PRVAccountant()
    prv.history = [(1.0, 0.25, 24)]
    assert p["epsilon"] == pytest.approx(prv.get_epsilon(delta=1e-5)) and p["accountant"] == "prv"
    split = PoissonSplit(DataBundle.from_tensors((x, y)).train, 0.0)
    empty = next(split.batches(torch.arange(4), 1))
    assert empty[0].shape == (0, 3) and empty[1].shape == (0,)


@pytest.mark.parametrize("extra, says", [
    (["train.grad_clip=1"], "train.grad_clip: DP-SGD clips each sample's gradient"),
    (["train.strategy=ddp"], "train.strategy: ddp is not supported with train.privacy"),
    (["train.privacy.noise_multiplier=1"], "set either epsilon (a target) or noise_multiplier, not both"),
    (["train.privacy.epsilon=1e-6"], "cannot be reached"),
    (["--nproc", "2"], "train a private run without --nproc"),
])
def test_refusals_are_one_line(tmp_path, capsys, extra, says):
    code = main(["train", "digits-mlp", "train.privacy.epsilon=3", *extra, "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and says in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r" / "recipe.yaml").exists()


def test_without_opacus_the_command_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)  # import opacus raises ImportError
    code = main(["train", "digits-mlp", "train.privacy.epsilon=3", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "pip install 'powertrain[trust]'" in err and len(err.splitlines()) == 1, err
