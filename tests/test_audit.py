"""`powertrain audit`: the attack's figures against sklearn and a brute-force count, the (epsilon, delta)
bound against its closed form, AUC near 1 on a model that memorised a tiny train set (random labels) and
near 0.5 on an untrained model, and the command on a private run (audit.json, ROC picture, the bound)."""
import json

import numpy as np
import pytest
import torch
from torch import nn

import powertrain
from powertrain import DataBundle, TrainConfig, Trainer
from powertrain.trust.audit import auc, audit_trainer, dp_bounds, tpr_at_fpr
from powertrain.cli import main


def test_figures_against_sklearn_and_a_brute_force_count():
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(0)
    m, n = rng.normal(0.5, 1, 300), rng.normal(0, 1, 400)
    m[:20] = n[:20]  # ties
    labels = np.r_[np.ones(300), np.zeros(400)]
    assert auc(m, n) == pytest.approx(roc_auc_score(labels, np.r_[m, n]))
    fpr, tpr, _ = roc_curve(labels, np.r_[m, n])
    assert tpr_at_fpr(m, n, 0.01) == pytest.approx(tpr[fpr <= 0.01].max())
    t = np.sort(n)[::-1][4]  # 1% of 400 = 4 non-members may pass: the threshold is the 5th highest
    assert (n > t).mean() <= 0.01 and tpr_at_fpr(m, n, 0.01) == (m > t).mean()


def test_dp_bound_closed_form():
    b = dp_bounds(1.0, 1e-5)
    e = np.e
    assert b["advantage"] == pytest.approx((e - 1 + 2e-5) / (e + 1))
    assert b["tpr_at_1pct_fpr"] == pytest.approx(e * 0.01 + 1e-5)
    fpr = np.linspace(0, 1, 100001)  # the bound curve's largest TPR - FPR is the advantage bound
    from powertrain.trust.figures import dp_roc_bound

    assert np.max(dp_roc_bound(fpr, 1.0, 1e-5) - fpr) == pytest.approx(b["advantage"], abs=1e-4)
    assert 0.5 < b["auc"] < 1 and dp_bounds(1e-9, 0.0)["auc"] == pytest.approx(0.5, abs=1e-4)
    assert dp_bounds(50.0, 1e-5)["advantage"] == pytest.approx(1.0)


def _random_labels(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 20, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_memorised_tiny_set_is_found_and_an_untrained_model_is_a_coin():
    torch.manual_seed(0)
    train, test = _random_labels(64, 1), _random_labels(64, 2)  # labels are noise: only memorising fits them
    data = DataBundle.from_tensors(train, test=test, num_classes=10)
    model = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 10))
    t = Trainer(model, data, TrainConfig(epochs=150, batch_size=64, lr=1e-2, device="cpu"), callbacks=[], meter=False)
    t.fit()
    r, _, _ = audit_trainer(t, reps=200)
    assert r["auc"] > 0.95 and r["auc_ci95"][0] > 0.9 and r["advantage"] > 0.8, r

    train, test = _random_labels(600, 3), _random_labels(600, 4)
    data = DataBundle.from_tensors(train, test=test, num_classes=10)
    fresh = Trainer(nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10)), data, TrainConfig(device="cpu"),
                    callbacks=[], meter=False)
    r, _, _ = audit_trainer(fresh, reps=200)
    assert abs(r["auc"] - 0.5) < 0.06 and r["auc_ci95"][0] < 0.5 < r["auc_ci95"][1], r
    assert r["bound"] is None and r["within_bound"] is None


def test_audit_command_on_a_private_run(tmp_path, capsys):
    pytest.importorskip("opacus")
    run = powertrain.train("digits-mlp", ["train.epochs=1", "train.batch_size=128", "train.privacy.epsilon=1",
                                          "data.test_fraction=0.5", "train.device=cpu"], out=tmp_path / "dp",
                           callbacks=[])
    assert main(["audit", str(run.dir), "--n", "300"]) == 0
    out = capsys.readouterr().out
    assert "AUC" in out and "allows at most" in out, out
    r = json.loads((run.dir / "audit.json").read_text())
    assert r["members"]["n"] == r["nonmembers"]["n"] == 300 and r["nonmembers"]["split"] == "test"
    assert r["privacy"]["epsilon"] == pytest.approx(run.bill["privacy"]["epsilon"])
    assert r["bound"]["advantage"] == pytest.approx(dp_bounds(r["privacy"]["epsilon"], 1e-5)["advantage"])
    assert r["within_bound"] is True and r["auc_ci95"][0] <= r["auc"] <= r["auc_ci95"][1]
    assert (run.dir / r["picture"]).stat().st_size > 10000
    assert r["cost"]["flops"] == 600 * run.bill["flops"]["per_sample_forward"] and r["bill"]["time_s"]["fit"] > 0
