"""`powertrain explain`: Captum's maps against quantities computed here (saliency = |gradient|, integrated
gradients' completeness, occlusion of a linear model = w_i x_i), the checks' verdicts on models whose
answer is known, and the command on every data kind the recipes have (few samples), with its picture,
explain.json and bill."""
import json

import pytest
import torch
from torch import nn

pytest.importorskip("captum")

import powertrain  # noqa: E402
from powertrain.trust import explain as E  # noqa: E402
from powertrain.cli import main  # noqa: E402


def _task(model, x, y, task="multiclass"):
    fn = E.task_function(model, task)
    with torch.no_grad():
        target = fn(x).argmax(1)
    return E.Task("table", task, model, fn, x, target, y, 0, (), False)


def test_maps_against_quantities_computed_here():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    task = _task(model, x, y)
    xs = x.clone().requires_grad_(True)
    out = model(xs).gather(1, task.target[:, None]).sum()
    (grad,) = torch.autograd.grad(out, xs)
    assert torch.allclose(E.attribute(task, "saliency"), grad.abs(), atol=1e-6)
    ig = E.attribute(task, "integrated_gradients")  # completeness: the attributions sum to f(x) - f(baseline)
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, task.target[:, None])[:, 0]
    assert torch.allclose(ig.sum(1), gap, rtol=1e-3, atol=1e-4)
    linear = nn.Linear(6, 3).eval()
    lt = _task(linear, x, y)
    w = linear.weight.detach()[lt.target]  # occluding feature i of a linear model removes w_i x_i
    assert torch.allclose(E.attribute(lt, "occlusion"), w * x, atol=1e-5)


def test_checks_verdicts_on_known_cases():
    torch.manual_seed(0)
    linear = nn.Linear(20, 2).eval()
    x = torch.randn(64, 20)
    y = linear(x).argmax(1).detach()
    task = _task(linear, x, y)
    d = E.deletion_test(task, E.attribute(task, "integrated_gradients"))
    assert d["faithful"] and d["area_accuracy"] > 0.1 and d["accuracy"][0] == 1.0  # w_i x_i ranks the evidence
    assert d["fractions"][0] == 0 and d["fractions"][-1] == 1 and len(d["accuracy_random"]) == len(d["fractions"])
    flipped = E.deletion_test(task, -E.attribute(task, "integrated_gradients"))  # the worst order: slower than random
    assert not flipped["faithful"] and flipped["area_score"] < 0
    a = E.attribute(task, "saliency")
    assert E._spearman(a, a) == pytest.approx([1.0] * 64)  # maps that do not change would fail the check
    twin = E.randomized_copy(linear, seed=0)
    assert not torch.equal(twin.weight, linear.weight) and twin.weight.shape == linear.weight.shape


KINDS = {  # recipe, overrides (a few steps), expected kind
    "image": ("digits-mlp", ["train.max_steps=10", "data.test_fraction=0.5"]),
    "signal": ("mnist1d-mlp", ["train.max_steps=5"]),
    "table": ("csv-mlp", ["train.max_steps=10"]),
    "text": ("gpt-stdlib", ["train.max_steps=3", "data.max_chars=30000", "data.block_size=32", "data.val_fraction=0.2",
                            "model.n_layer=1", "model.n_embd=16", "model.n_head=2", "train.eval_every_steps=3"]),
    "reconstruction": ({"name": "digits-ae", "data": {"name": "digits", "reconstruct": True, "test_fraction": 0.5},
                        "model": {"name": "autoencoder", "encoder": [16]}}, ["train.max_steps=10"]),
}


def _train(recipe, overrides, out):
    return powertrain.train(recipe, [*overrides, "train.device=cpu"], out=out, callbacks=[])


@pytest.mark.parametrize("kind", list(KINDS))
def test_explain_on_every_data_kind(kind, tmp_path, capsys):
    name, overrides = KINDS[kind]
    run = _train(name, overrides, tmp_path / kind)
    code = main(["explain", str(run.dir), "--n", "4"])
    out = capsys.readouterr().out
    assert code == 0 and "integrated_gradients" in out and "cost:" in out, out
    r = json.loads((run.dir / "explain.json").read_text())
    assert r["kind"] == kind and r["n"] == 4 and (run.dir / r["picture"]).stat().st_size > 5000
    for method in E.METHODS:
        m = r["methods"][method]
        assert len(m["deletion"]["score"]) == len(m["deletion"]["fractions"]) >= 3
        assert m["randomization"]["threshold"] == E.RHO_THRESHOLD and len(m["randomization"]["per_sample"]) == 4
        assert m["flops"] > 0 and m["time_s"] > 0
        assert (m["infidelity"] is None) == (kind == "text")
    assert r["cost"]["energy_j"] > 0 and r["cost"]["energy_method"]
    assert r["bill"]["flops"]["train_total"] == r["cost"]["flops"] and r["bill"]["time_s"]["fit"] > 0


def test_token_attributions_add_up_to_the_logit_gap(tmp_path):
    name, overrides = KINDS["text"]
    run = _train(name, overrides, tmp_path / "gpt")
    from powertrain.api import load_trainer
    from powertrain.run.rundir import RunDir

    trainer = load_trainer(RunDir(run.dir))
    model = trainer.model.eval()
    task = E.build_task(model, trainer.data.meta, trainer.data.val, 3, "predicted", 0)
    assert task.tokens and task.embedding == "wte" and task.x.shape == (3, 32)
    ig = E.attribute(task, "integrated_gradients")
    with torch.no_grad():
        base = torch.full_like(task.x, task.baseline)
        gap = (task.fn(task.x) - task.fn(base)).gather(1, task.target[:, None])[:, 0]
    assert torch.allclose(ig.sum(1), gap, rtol=0.02, atol=1e-3)


def test_bad_arguments_and_missing_captum_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["explain", str(tmp_path), "--method", "lime"]) == 2
    assert "--method: 'lime' is not one of saliency" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "captum", None)
    assert main(["explain", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'powertrain[trust]'" in err and len(err.splitlines()) == 1


def test_explain_picture_has_a_colour_scale_and_the_checks_verdicts(tmp_path, capsys, monkeypatch):
    from powertrain.trust import figures

    drawn = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: (drawn.append(fig), save(fig, path))[1])
    name, overrides = KINDS["image"]
    run = _train(name, overrides, tmp_path / "img")
    assert main(["explain", str(run.dir), "--n", "4", "--method", "saliency,integrated_gradients"]) == 0
    table = capsys.readouterr().out.splitlines()
    r = json.loads((run.dir / "explain.json").read_text())
    (fig,) = drawn
    scales = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(scales) == 2  # one per method column
    assert [ax.get_xlim() for ax in scales] == [(0.0, 1.0), (-1.0, 1.0)]  # saliency is a magnitude; IG is signed
    footer = "\n".join(t.get_text() for t in fig.texts)
    for method, e in r["methods"].items():
        row = next(line.split() for line in table if line.startswith(method))  # explain's own table: faithful, sane
        faithful, sane = row[2], row[4]
        line = next(x for x in footer.splitlines() if figures.TITLES[method] + ":" in x)
        assert f"faithful {faithful}" in line and f"sane {sane}" in line, (line, row)
        assert (e["deletion"]["faithful"], e["randomization"]["passes"]) == (faithful == "yes", sane == "yes")
