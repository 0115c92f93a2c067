"""powertrain scale and plan --from-fit: the fit recovers known constants, the compute-optimal split
matches a brute-force search, the back-test holds out the largest size, plan's figures follow from the
fit, and a tiny family of GPT runs is trained, fitted, and reused on a rerun."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from powertrain.errors import RecipeError
from powertrain.study.plan import plan
from powertrain.study.scalelaw import analyse, fit_law, law_loss, optimum, predict

TRUE = {"E": 1.2, "A": 40.0, "B": 300.0, "alpha": 0.35, "beta": 0.3}
N = np.array([5e4, 1e5, 2e5, 4e5] * 3)
D = np.repeat([1e6, 3e6, 1e7], 4)


def test_fit_recovers_the_constants_of_exact_data():
    c = fit_law(N, D, law_loss(TRUE, N, D))
    for k, v in TRUE.items():
        assert c[k] == pytest.approx(v, rel=0.01), k


def test_compute_optimal_split_matches_brute_force():
    k, budget = 6.0, 1e15
    opt = optimum(TRUE, budget, k)
    ns = np.geomspace(1e3, 1e9, 200001)
    brute = ns[np.argmin(law_loss(TRUE, ns, budget / (k * ns)))]
    assert opt["params"] == pytest.approx(brute, rel=1e-3)
    assert k * opt["params"] * opt["tokens"] == pytest.approx(budget)


def _points(noise=0.0):
    rng = np.random.default_rng(0)
    loss = law_loss(TRUE, N, D) * (1 + noise * rng.standard_normal(len(N)))
    return [{"params": n, "tokens": d, "loss": l, "flops": 6.5 * n * d} for n, d, l in zip(N, D, loss)]


def test_backtest_holds_out_the_largest_size():
    fit = analyse(_points(), {"mfu": 0.1, "j_per_flop": 1e-9, "energy_method": "estimated", "device": "cpu",
                              "runs": 12, "seconds": 1}, draws=20)
    bt = fit["backtest"]
    assert bt["held_out_params"] == 4e5 and len(bt["points"]) == 3
    assert bt["max_abs_error"] < 1e-3  # exact data: the smaller sizes alone pin the law down
    assert fit["k_flops_per_param_token"] == pytest.approx(6.5)
    with pytest.raises(RecipeError, match="3 sizes"):
        analyse([p for p in _points() if p["params"] <= 1e5], fit["calibration"], draws=0)


def test_bootstrap_interval_covers_the_fit_on_noisy_data():
    fit = analyse(_points(0.01), {"mfu": 0.1, "j_per_flop": 1e-9, "energy_method": "e", "device": "cpu", "runs": 12,
                                  "seconds": 1}, draws=40)
    for name, (lo, hi) in fit["interval_90"].items():
        assert lo <= fit["constants"][name] <= hi and lo <= TRUE[name] <= hi, name
    assert len(fit["bootstrap"]) >= 30


def test_plan_from_fit_follows_from_the_fit(tmp_path):
    from powertrain.measure import lookup_peak

    cal = {"mfu": 0.25, "j_per_flop": 2e-9, "energy_method": "estimated: test", "device": lookup_peak("h100", "bf16").device,
           "runs": 12, "seconds": 1}
    fit = analyse(_points(), cal, draws=20)
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(fit))
    p = plan(flops=1e16, from_fit=str(path), device="h100", dtype="bf16")
    opt = optimum(fit["constants"], 1e16, fit["k_flops_per_param_token"])
    assert p["params"] == pytest.approx(opt["params"]) and p["tokens"] == pytest.approx(opt["tokens"])
    assert p["flops"] == pytest.approx(1e16)
    assert p["loss"]["value"] == pytest.approx(float(law_loss(fit["constants"], opt["params"], opt["tokens"])))
    assert p["energy_j"] == pytest.approx(1e16 * 2e-9) and p["mfu"]["value"] == 0.25
    assert p["time_s"] == pytest.approx(1e16 / (p["peak"]["flops_per_s"] * 0.25))
    q = plan(params=1e6, tokens=2e8, from_fit=str(path))
    assert q["loss"]["value"] == pytest.approx(float(law_loss(fit["constants"], 1e6, 2e8)))
    assert predict(fit, params=1e6, flops=1e15)["tokens"] == pytest.approx(1e15 / (6.5 * 1e6))
    with pytest.raises(RecipeError, match="not a fit.json"):
        (tmp_path / "x.json").write_text("{}")
        plan(flops=1e15, from_fit=str(tmp_path / "x.json"))


def test_scale_trains_fits_and_reuses_runs(tmp_path):
    out = tmp_path / "sc"
    args = [sys.executable, "-m", "powertrain", "scale", "gpt-stdlib", "data.max_chars=30000", "data.block_size=16",
            "model.n_layer=1", "model.n_head=2", "train.batch_size=8", "train.precision=fp32", "--sizes", "8,12,16",
            "--budgets", "2e8,6e8", "--draws", "10", "--out", str(out)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr
    fit = json.loads((out / "fit.json").read_text())
    assert len(fit["points"]) == 6 and (out / "fit.png").stat().st_size > 1000
    for p in fit["points"]:
        bill = json.loads((tmp_path / p["run"] / "bill.json").read_text())
        assert p["flops"] == bill["flops"]["train_total"] and p["tokens"] == bill["samples_trained"] * 16
        assert abs(p["flops"] - (2e8 if "c2e+08" in p["run"] else 6e8)) <= bill["flops"]["per_step_train"] / 2
    assert fit["backtest"]["held_out_params"] == max(p["params"] for p in fit["points"])
    mtimes = {p["run"]: (tmp_path / p["run"] / "eval.json").stat().st_mtime_ns for p in fit["points"]}
    r2 = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r2.returncode == 0 and "parameters, budget" not in r2.stdout  # nothing trained again
    assert mtimes == {p["run"]: (tmp_path / p["run"] / "eval.json").stat().st_mtime_ns for p in fit["points"]}


def test_scale_refuses_bad_sizes_and_budgets():
    from powertrain.study.scale import parse_budgets, parse_sizes

    with pytest.raises(RecipeError, match="at least 3"):
        parse_sizes("32,64")
    with pytest.raises(RecipeError, match="--budgets"):
        parse_budgets("1e12")
    assert parse_sizes("[[16],[32],[64]]") == [[16], [32], [64]]


def test_scale_sizes_of_the_wrong_form_name_the_flag(tmp_path):
    from powertrain.study.scale import train_family

    with pytest.raises(RecipeError, match=r"--sizes: model.conv=8 is not a valid value.*\[\[8,16\]"):
        train_family("mnist1d-cnn", [8, 16, 32], [1e9, 2e9], out=tmp_path / "sc", say=lambda *a: None)
