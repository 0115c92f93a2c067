"""Distillation: the KD loss against a plain formula, the teacher frozen and in eval mode, cached logits equal
to fresh ones, alpha = 1 is plain training bit for bit, the teacher's FLOPs in the bill, `powertrain distill`
end to end (bill blocks, run.parent, compare), a GPT student of a GPT teacher, and the one-line refusals."""
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import powertrain
from powertrain import TrainConfig, Trainer, data, models
from powertrain.cli import main
from powertrain.train.distill import Distiller, TeacherLogits, distillation_loss
from powertrain.errors import PowertrainError, RecipeError
from powertrain.infer.generate import generate
from powertrain.report.compare import compare, table

QUICK = ["train.epochs=1", "train.batch_size=128", "train.log_every=100", "train.device=cpu"]


def by_hand(s, t, y, alpha, T):
    """The KD loss written out sample by sample with math.exp / math.log."""
    def softmax(row, temp):
        e = [math.exp(v / temp) for v in row]
        return [v / sum(e) for v in e]

    total = 0.0
    for srow, trow, label in zip(s.tolist(), t.tolist(), y.tolist()):
        ce = -math.log(softmax(srow, 1.0)[label])
        pt, ps = softmax(trow, T), softmax(srow, T)
        kl = sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps))
        total += alpha * ce + (1 - alpha) * T * T * kl
    return total / len(y)


def test_kd_loss_against_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g) * 3, torch.randn(5, 4, generator=g) * 3
    y = torch.tensor([0, 3, 1, 1, 2])
    for alpha, T in ((0.3, 2.0), (0.0, 4.0), (0.5, 1.0)):
        assert float(distillation_loss(s, t, y, alpha, T)) == pytest.approx(by_hand(s, t, y, alpha, T), rel=1e-5)
    # the T^2 factor: with alpha 0 the loss is T^2 x KL at temperature T
    kl4 = by_hand(s, t, y, 0.0, 4.0) / 16
    assert float(distillation_loss(s, t, y, 0.0, 4.0)) == pytest.approx(16 * kl4, rel=1e-5)
    assert torch.equal(distillation_loss(s, t, y, 1.0, 3.0), nn.functional.cross_entropy(s, y))  # alpha 1: CE
    assert float(distillation_loss(t, t, y, 0.0, 2.0)) == pytest.approx(0.0, abs=1e-6)  # KL of a distribution to itself
    # (B, T, V) logits of a language model: every token once, as the flattened batch
    s3, t3, y3 = s[:4].reshape(2, 2, 4), t[:4].reshape(2, 2, 4), y[:4].reshape(2, 2)
    assert float(distillation_loss(s3, t3, y3, 0.3, 2.0)) == pytest.approx(by_hand(s[:4], t[:4], y[:4], 0.3, 2.0), rel=1e-5)


@pytest.fixture(scope="module")
def digits():
    return data.build({"name": "digits"}, seed=0)


def teacher_net(meta):
    torch.manual_seed(1)  # dropout and batch norm: eval mode must switch both off
    return models.build({"name": "mlp", "hidden": [32], "dropout": 0.5, "batch_norm": True}, meta)


def student_net(meta, seed=0):
    torch.manual_seed(seed)
    return models.build({"name": "mlp", "hidden": [16], "dropout": 0.2}, meta)


def test_teacher_frozen_in_eval_and_cached_logits_equal_fresh(digits):
    teacher = teacher_net(digits.meta)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = TrainConfig(max_steps=3, batch_size=64, device="cpu", log_every=100)
    t = Distiller(student_net(digits.meta), digits, cfg, teacher=teacher, alpha=0.5, temperature=2.0,
                  callbacks=[], meter=False).fit()
    assert t.cached and isinstance(t.data.train, TeacherLogits)
    assert not t.teacher.training and all(not p.requires_grad for p in t.teacher.parameters())
    for k, v in t.teacher.state_dict().items():  # weights and batch-norm statistics untouched
        assert torch.equal(v, before[k]), k
    x, _ = digits.train.tensors
    with torch.no_grad():
        fresh = teacher(x)
    assert torch.allclose(t.data.train.logits, fresh, atol=1e-5, rtol=0)
    order = t.epoch_order(0)
    for i, (xb, tb, yb) in enumerate(t.data.train.batches(order, 64, start=2)):  # rows follow the batch's indices
        idx = order[(2 + i) * 64:(3 + i) * 64]
        assert torch.equal(xb, x[idx]) and torch.equal(tb, t.data.train.logits[idx])
        assert torch.allclose(tb, teacher(xb), atol=1e-5, rtol=0)
    assert "teacher" not in dict(t.model.named_modules())  # the teacher is no part of the student


def test_alpha_one_trains_exactly_as_without_a_teacher(digits):
    cfg = TrainConfig(epochs=1, batch_size=64, device="cpu", log_every=100)
    plain = Trainer(student_net(digits.meta), digits, cfg, callbacks=[], meter=False).fit()
    teacher = teacher_net(digits.meta)  # before the student: its seed then sets the student's dropout draws too
    kd = Distiller(student_net(digits.meta), digits, cfg, teacher=teacher, alpha=1.0, callbacks=[], meter=False).fit()
    for (name, a), b in zip(plain.model.state_dict().items(), kd.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_teacher_forward_flops_are_counted(digits):
    cfg = TrainConfig(max_steps=2, batch_size=64, device="cpu", log_every=100)
    plain = Trainer(student_net(digits.meta), digits, cfg, callbacks=[], meter=False)
    live = Distiller(student_net(digits.meta), digits, cfg, teacher=teacher_net(digits.meta), cache=False,
                     callbacks=[], meter=False)
    cached = Distiller(student_net(digits.meta), digits, cfg, teacher=teacher_net(digits.meta), callbacks=[])
    per_sample = live.teacher_flops_per_sample
    assert per_sample == 2 * (64 * 32 + 32 * 10)  # the teacher's two Linear layers (batch norm, ReLU: not matmuls)
    step = lambda t: t.train_flops(0, 1)  # noqa: E731 - one full step: model FLOPs (the loss's elementwise work: none)
    assert step(live) - step(plain) == 64 * per_sample  # a teacher forward per sample
    assert step(cached) == step(plain)  # cached: no teacher forward per step
    assert cached.cache_flops == len(digits.train) * per_sample
    cached.fit()
    assert cached.meter.totals()["fit"].flops == cached.train_flops(0, 2) + cached.cache_flops  # the cache is billed
    assert live.teacher_forward_flops() == 0 and cached.teacher_forward_flops() == cached.cache_flops
    stats = {k: v.clone() for k, v in live.teacher.state_dict().items()}
    live.fit()  # the teacher on every batch: still in eval mode (batch-norm statistics unchanged), no gradients
    assert all(torch.equal(v, stats[k]) for k, v in live.teacher.state_dict().items())
    assert all(p.grad is None for p in live.teacher.parameters())
    assert live.teacher_forward_flops() == 2 * 64 * per_sample


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd")
    teacher = powertrain.train("digits-mlp", ["model.hidden=[48]", *QUICK], out=root / "teacher", callbacks=[])
    return root, teacher.dir


def test_distill_cli_end_to_end(runs, capsys):
    root, teacher = runs
    student = root / "student"
    assert main(["distill", "--teacher", str(teacher), "digits-mlp", "model.hidden=[8]", *QUICK, "--alpha", "0.3",
                 "--temperature", "2", "--out", str(student), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "teacher: 3,610 params" in out and "student: 610 params" in out and "(5.9x fewer params)" in out
    bill = json.loads((student / "bill.json").read_text())
    tbill = json.loads((teacher / "bill.json").read_text())
    assert bill["teacher"]["params"] == tbill["params"] == 3610 and bill["params"] == 610
    assert bill["teacher"]["flops_per_sample_forward"] == tbill["flops"]["per_sample_forward"]
    assert bill["teacher"]["j_per_inference_sample"] == tbill["j_per_inference_sample"]
    assert bill["distill"]["student"]["flops_per_sample_forward"] == bill["flops"]["per_sample_forward"]
    assert bill["distill"]["cached_logits"] and bill["distill"]["teacher_forward_flops"] == 1293 * 2 * (64 * 48 + 48 * 10)
    student_flops = bill["flops"]["train_total"] - bill["distill"]["teacher_forward_flops"]  # 10 full steps + 13 samples
    assert bill["steps"] == 11 and 10 * bill["flops"]["per_step_train"] < student_flops < 11 * bill["flops"]["per_step_train"]
    recipe = (student / "recipe.yaml").read_text()
    assert f"parent: {teacher.resolve()}" in recipe and f"teacher: {teacher.resolve()}" in recipe
    assert "alpha: 0.3" in recipe and "temperature: 2.0" in recipe
    rows, _ = compare([teacher, student])
    text = table(rows, "accuracy")
    assert "derived: student = distill T=2 a=0.3 of teacher" in text
    row = rows[1]
    assert row["train_flops"] == row["own"]["train_flops"] + tbill["flops"]["train_total"]  # the teacher's training too
    weights = load_file(str(sorted((student / "checkpoints").glob("step-*"))[-1] / "model.safetensors"))
    assert sum(w.numel() for w in weights.values()) == 610  # the student's weights only


def test_distill_nproc_launches_the_same_command_under_torchrun(runs, tmp_path, monkeypatch):
    """`distill --nproc N` validates once, then torchrun runs the command without --nproc in N processes
    (tests/test_distributed.py runs such a job and checks it against one process)."""
    root, teacher = runs
    launched = []
    from powertrain.train import distributed

    monkeypatch.setattr(distributed, "launch", lambda argv, nproc: launched.append((argv, nproc)) or 0)
    assert main(["distill", "--teacher", str(teacher), "digits-mlp", "model.hidden=[8]", "--alpha", "0.3",
                 "--nproc", "2", "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    assert launched == [(["distill", "--teacher", str(teacher), "digits-mlp", "model.hidden=[8]", "--alpha=0.3",
                          "--out", str(tmp_path / "s"), "--no-progress"], 2)]


def test_resumed_distillation_bills_each_cache_build(runs, tmp_path):
    _, teacher = runs
    first = powertrain.train("digits-mlp", ["model.hidden=[8]", *QUICK, f"train.distill.teacher={teacher}"],
                             out=tmp_path / "s", callbacks=[])
    again = powertrain.resume(first.dir, ["train.epochs=2"], callbacks=[])  # a new process builds the cache again
    t, bill = again.trainer, again.bill
    assert t.cache_builds == 2 and bill["distill"]["teacher_forward_flops"] == 2 * t.cache_flops
    assert bill["flops"]["train_total"] == t.train_flops(0, t.step) + 2 * t.cache_flops


def refusal(argv, capsys) -> str:
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    return err


def test_bad_teachers_are_one_line_errors(runs, tmp_path, capsys):
    root, teacher = runs
    err = refusal(["distill", "--teacher", str(tmp_path / "nope"), "digits-mlp", *QUICK, "--out", str(tmp_path / "a")],
                  capsys)
    assert "train.distill.teacher" in err and "does not exist" in err and not (tmp_path / "a").exists()
    iris = powertrain.train("xor", ["train.epochs=1", "train.device=cpu"], out=tmp_path / "xor", callbacks=[]).dir
    err = refusal(["distill", "--teacher", str(iris), "digits-mlp", *QUICK, "--out", str(tmp_path / "b")], capsys)
    assert "train.distill.teacher" in err and "2 classes" in err and "10" in err and not (tmp_path / "b").exists()
    err = refusal(["distill", "--teacher", str(teacher), "digits-mlp", *QUICK, "--alpha", "2", "--out",
                   str(tmp_path / "c")], capsys)
    assert err.startswith("powertrain: error: train.distill.alpha")
    recon = data.build({"name": "digits", "reconstruct": True})
    with pytest.raises(RecipeError, match="needs a classifier or a language model .* task is 'reconstruction'"):
        Distiller(models.build({"name": "autoencoder", "encoder": [8]}, recon.meta), recon, TrainConfig(device="cpu"),
                  teacher=nn.Identity(), callbacks=[], meter=False)


TEXT = "".join(f"def f{i}(x):\n    return x * {i % 5}\n\n" for i in range(60))
GPT = {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16}


def test_gpt_student_of_a_gpt_teacher_and_vocabulary_check(tmp_path, capsys):
    (tmp_path / "a.py").write_text(TEXT)
    (tmp_path / "b.py").write_text(TEXT.replace("x", "y"))  # another character set: another vocabulary
    lm = lambda path, emb: {"data": {"name": "text", "path": str(tmp_path / path), "block_size": 16}, "model": {**GPT, "n_embd": emb},
                            "train": {"max_steps": 3, "batch_size": 8, "log_every": 100, "device": "cpu"}}
    teacher = powertrain.train(lm("a.py", 32), out=tmp_path / "t", callbacks=[]).dir
    recipe = lm("a.py", 16)
    recipe["train"]["distill"] = {"teacher": str(teacher), "temperature": 2.0}
    run = powertrain.train(recipe, out=tmp_path / "s", callbacks=[])
    assert not run.trainer.cached  # windows move every epoch: the teacher runs on every batch
    assert run.bill["teacher"]["params"] > run.bill["params"]
    assert run.bill["distill"]["teacher_forward_flops"] == 3 * 8 * run.trainer.teacher_flops_per_sample
    other = lm("b.py", 16)
    other["train"]["distill"] = {"teacher": str(teacher)}
    with pytest.raises(PowertrainError) as e:
        powertrain.train(other, out=tmp_path / "s2", callbacks=[])
    assert "another vocabulary" in str(e.value) and "\n" not in str(e.value) and not (tmp_path / "s2").exists()
    shutil.rmtree(teacher)  # the student stands alone: eval and generate need no teacher
    assert powertrain.evaluate(run.dir, "val")["loss"] == pytest.approx(run.metrics["val"]["loss"], rel=1e-5)
    assert generate(run.dir, prompt="def ", max_new_tokens=5, seed=0).startswith("def ")


def test_recipes_doc_lists_the_distill_and_init_keys():
    from pathlib import Path

    from powertrain import load_recipe
    from powertrain.recipe import DistillConfig

    doc = (Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
    for key in [*DistillConfig.model_fields, "init_from", "init_exclude"]:
        assert f"| {key} |" in doc, key
    assert "init_from" not in load_recipe("xor").to_dict()["model"]  # unset: recipe.yaml as before


@pytest.mark.parametrize("name", ["powertrain.train.distill", "powertrain.train.transfer", "powertrain.train.optim"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0 and result.attempted > 0
