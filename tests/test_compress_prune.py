"""Pruning: exactly the globally smallest |weights| are zeroed, the per-layer report matches a count by
hand in the saved checkpoint, masks survive fine-tuning, prune.remove leaves plain parameters; the
derived run directory is read by `powertrain bill` and `powertrain compare`; the command's refusals."""
import argparse
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import powertrain
from powertrain.shrink import prune
from powertrain.cli.shrink import add_commands
from powertrain.errors import RecipeError

WEIGHTS = ["1.weight", "4.weight", "7.weight"]  # digits-mlp: Flatten, Linear 64-256, ReLU, Dropout, Linear 256-128, ...


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    return powertrain.train("digits-mlp", ["train.epochs=2"], out=tmp_path_factory.mktemp("p") / "mlp", callbacks=[]).dir


def newest_weights(run_dir) -> dict:
    return load_file(str(sorted((run_dir / "checkpoints").glob("step-*"))[-1] / "model.safetensors"))


def test_one_shot_zeroes_exactly_the_globally_smallest_weights(mlp_run, tmp_path):
    child = prune(mlp_run, sparsity=0.7, epochs=0, out=tmp_path / "p70")
    before, after = newest_weights(mlp_run), newest_weights(child)
    assert after.keys() == before.keys()  # prune.remove: plain `weight`, no weight_orig / weight_mask
    total = sum(before[k].numel() for k in WEIGHTS)
    zeroed = torch.cat([before[k][after[k] == 0].abs() for k in WEIGHTS])
    kept = torch.cat([before[k][after[k] != 0].abs() for k in WEIGHTS])
    assert len(zeroed) == round(0.7 * total)
    assert zeroed.max() <= kept.min()  # one global magnitude threshold across the layers
    for k in before:  # nothing else moved: no fine-tuning, biases dense
        kept_mask = after[k] != 0
        assert torch.equal(after[k][kept_mask], before[k][kept_mask])
        if k not in WEIGHTS:
            assert torch.equal(after[k], before[k])
    report = json.loads((child / "derived.json").read_text())["report"]
    by_hand = {k: int((after[k] == 0).sum()) for k in WEIGHTS}
    assert {r["name"]: r["zeros"] for r in report["layers"]} == by_hand
    assert {r["name"]: r["params"] for r in report["layers"]} == {k: after[k].numel() for k in WEIGHTS}
    assert report["zeros"] == round(0.7 * total) and report["sparsity"] == pytest.approx(round(0.7 * total) / total)
    assert report["finetune_steps"] == 0 and report["metrics"]["final"]["test"] == pytest.approx(
        report["metrics"]["after_prune"]["test"])


def test_rounds_with_fine_tuning_keep_the_masks(mlp_run, tmp_path):
    child = prune(mlp_run, sparsity=0.8, rounds=2, epochs=1, lr=1e-3, out=tmp_path / "p80", callbacks=[])
    before, after = newest_weights(mlp_run), newest_weights(child)
    total = sum(after[k].numel() for k in WEIGHTS)
    assert sum(int((after[k] == 0).sum()) for k in WEIGHTS) == round(0.8 * total)
    kept = after["4.weight"] != 0
    assert not torch.equal(after["4.weight"][kept], before["4.weight"][kept])  # fine-tuned
    derived = json.loads((child / "derived.json").read_text())
    assert derived["parent"] == str(mlp_run.resolve()) and derived["method"] == "prune"
    recipe = powertrain.load_recipe(child / "recipe.yaml")
    assert recipe.run.parent == str(mlp_run.resolve()) and recipe.train.lr == 1e-3 and recipe.train.epochs == 2
    rounds = derived["report"]["rounds"]
    steps_per_epoch = json.loads((child / "eval.json").read_text())["step"] // 2
    assert [r["step"] for r in rounds] == [0, steps_per_epoch]
    assert rounds[0]["sparsity"] == pytest.approx(1 - 0.2 ** 0.5) and rounds[1]["sparsity"] == pytest.approx(0.8)
    bill = json.loads((child / "bill.json").read_text())
    assert bill["steps"] == 2 * steps_per_epoch and bill["flops"]["train_total"] > 0
    assert bill["derived"]["parent"] == str(mlp_run.resolve())
    lines = [json.loads(line) for line in (child / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r.get("window") == "epoch"] == [1, 2]  # fine-tuning logged in the child


def test_derived_runs_are_read_by_bill_and_compare(mlp_run, tmp_path):
    child = prune(mlp_run, sparsity=0.5, steps=3, out=tmp_path / "c", callbacks=[])
    p = subprocess.run([sys.executable, "-m", "powertrain", "bill", str(child)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert f"derived run (prune of {mlp_run.resolve()})" in p.stdout
    png = tmp_path / "cmp.png"
    p = subprocess.run([sys.executable, "-m", "powertrain", "compare", str(mlp_run), str(child), "--png", str(png)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "derived: c = prune 50% of mlp" in p.stdout and png.read_bytes()[:4] == b"\x89PNG"
    from powertrain.report.compare import compare

    rows, _ = compare([mlp_run, child])
    own, parent = (json.loads((d / "bill.json").read_text()) for d in (child, mlp_run))
    assert rows[1]["energy_j"] == pytest.approx(own["energy"]["total_j"] + parent["energy"]["total_j"])
    assert rows[1]["train_flops"] == own["flops"]["train_total"] + parent["flops"]["train_total"]
    assert rows[1]["method"] == "prune 50%" and rows[0]["method"] is None


def parser():
    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers(dest="command"))
    return p


def test_prune_command_prints_the_layers_and_refuses_bad_values(mlp_run, tmp_path, capsys):
    args = parser().parse_args(["prune", str(mlp_run), "--sparsity", "0.5", "--epochs", "0", "--out", str(tmp_path / "x")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "all pruned layers" in out and "50.00%" in out and f"derived run written to {tmp_path / 'x'}" in out
    assert "until a sparse kernel" in out  # unstructured: labelled as saving nothing
    report = json.loads((tmp_path / "x" / "derived.json").read_text())["report"]
    assert report["saves"] == "nothing until a sparse kernel is used"
    for argv, words in ((["--sparsity", "1"], "--sparsity"), (["--sparsity", "abc"], "--sparsity"),
                        (["--rounds", "0"], "--rounds"), (["--lr", "-1"], "--lr")):
        args = parser().parse_args(["prune", str(mlp_run), *argv, "--out", str(tmp_path / "y")])
        with pytest.raises(RecipeError, match=words):
            args.func(args)
    assert not (tmp_path / "y").exists()  # refused before anything was written
