"""Transfer learning: the partial-load report against a hand-built state dict, `model.init_from` in a recipe
(a new head for another number of classes, init_from.json, run.parent, compare, evaluate), `train.freeze`
(frozen parameters bit-equal after a step, the others moved) and the discriminative LR's parameter groups."""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import powertrain
from powertrain import TrainConfig, Trainer, api, data, load_recipe, models
from powertrain.train import lifecycle
from powertrain.train.transfer import load_partial
from powertrain.errors import PowertrainError, RecipeError
from powertrain.report.compare import compare, table

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from datafiles import write_image_folder  # noqa: E402


def test_partial_load_report_against_a_hand_built_state_dict():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 5), nn.Linear(5, 2))
    init = {k: v.clone() for k, v in net.state_dict().items()}
    source = {"0.weight": torch.full((3, 4), 0.5), "0.bias": torch.arange(3.0),  # matched
              "1.running_mean": torch.ones(3), "1.weight": torch.full((3,), 2.0),  # matched: a buffer and a parameter
              "3.weight": torch.ones(7, 3), "3.bias": torch.ones(7),  # a head for 7 classes: shape mismatch
              "4.weight": torch.ones(2, 5),  # excluded below
              "old.weight": torch.ones(1)}  # unexpected
    r = load_partial(net, source, exclude=["4.*"])
    assert r["matched"] == ["0.weight", "0.bias", "1.weight", "1.running_mean"]
    assert r["shape_mismatch"] == [{"name": "3.weight", "model": [5, 3], "source": [7, 3]},
                                   {"name": "3.bias", "model": [5], "source": [7]}]
    assert r["missing"] == ["1.bias", "1.running_var", "1.num_batches_tracked"]
    assert r["excluded"] == ["4.weight", "4.bias"] and r["unexpected"] == ["old.weight"]
    assert r["loaded_values"] == 12 + 3 + 3 and r["model_values"] == 15 + 6 + 20 + 12
    now = net.state_dict()
    for k in r["matched"]:
        assert torch.equal(now[k], source[k]), k
    for k in now:
        if k not in r["matched"]:
            assert torch.equal(now[k], init[k]), k  # left at init
    assert net.pretrained_names == {"0.weight", "0.bias", "1.weight"}  # parameters only: the backbone


def folder_recipe(path: Path, **extra) -> dict:
    return {"data": {"name": "image-folder", "path": str(path), "size": 8, "test_fraction": 0.25},
            "model": {"name": "cnn", "conv": [4, 8], "dense": [16]},  # 0 conv 3 conv 7 linear 9 head
            "train": {"epochs": 2, "batch_size": 4, "lr": 1e-2, "device": "cpu", "log_every": 100}, **extra}


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    root = tmp_path_factory.mktemp("tl")
    write_image_folder(root / "two", classes=("a", "b"), per_class=8, size=(8, 8))
    write_image_folder(root / "three", classes=("cat", "dog", "fish"), per_class=8, size=(8, 8), seed=1)
    return root, powertrain.train(folder_recipe(root / "two"), out=root / "parent", callbacks=[]).dir


def newest(run_dir: Path) -> dict:
    return load_file(str(sorted((run_dir / "checkpoints").glob("step-*"))[-1] / "model.safetensors"))


def test_init_from_gives_a_new_head_and_a_report(parent, capsys):
    root, src = parent
    capsys.readouterr()
    recipe = folder_recipe(root / "three")
    recipe["model"]["init_from"] = str(src)
    recipe["train"].update(freeze=["0.*"], backbone_lr_mult=0.1)
    trainer = lifecycle.build_trainer(load_recipe(recipe), None, callbacks=[])  # loaded, not yet trained
    before, loaded = newest(src), trainer.model.state_dict()
    assert all(torch.equal(loaded[k], before[k]) for k in ("0.weight", "0.bias", "3.weight", "7.weight", "7.bias"))
    assert loaded["9.weight"].shape == (3, 16) and before["9.weight"].shape == (2, 16)
    names = [g["name"] for g in trainer.optimizer.param_groups]
    assert names == ["head", "backbone"]
    assert {id(p) for p in trainer.optimizer.param_groups[0]["params"]} == {id(trainer.model[9].weight), id(trainer.model[9].bias)}
    capsys.readouterr()

    run = powertrain.train(recipe, out=root / "child", callbacks=[])
    printed = capsys.readouterr().out
    assert f"init_from {src.resolve()}: 6 of 8 tensors loaded" in printed
    assert "shape mismatch, left at init: 9.weight (model [3, 16] vs source [2, 16]), 9.bias (model [3] vs source [2])" in printed
    report = json.loads((run.dir / "init_from.json").read_text())
    assert report["matched"] == ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias"]
    assert [m["name"] for m in report["shape_mismatch"]] == ["9.weight", "9.bias"] and report["source"] == str(src.resolve())
    after = newest(run.dir)
    assert torch.equal(after["0.weight"], before["0.weight"]) and torch.equal(after["0.bias"], before["0.bias"])  # frozen
    assert not torch.equal(after["3.weight"], before["3.weight"])  # loaded, then fine-tuned at lr x 0.1
    assert run.bill["trainable_params"] == run.bill["params"] - (4 * 3 * 9 + 4)
    raw = (run.dir / "recipe.yaml").read_text()
    assert f"parent: {src.resolve()}" in raw and f"init_from: {src.resolve()}" in raw
    rows, _ = compare([src, run.dir])
    assert rows[1]["method"] == "fine-tune" and "derived: child = fine-tune of parent" in table(rows, "accuracy")
    assert rows[1]["train_flops"] == rows[1]["own"]["train_flops"] + rows[0]["train_flops"]
    # eval (and resume) read init_from.json for the backbone; the weights come from the run's own checkpoint
    assert api.evaluate(run.dir)["accuracy"] == pytest.approx(run.metrics["test"]["accuracy"])


def test_init_from_refusals_are_one_line(parent, tmp_path):
    root, src = parent
    bad = folder_recipe(root / "three")
    bad["model"]["init_from"] = str(tmp_path / "missing")
    with pytest.raises(PowertrainError) as e:
        powertrain.train(bad, out=tmp_path / "x", callbacks=[])
    assert str(e.value).startswith("model.init_from: run directory") and "\n" not in str(e.value)
    assert not (tmp_path / "x").exists()
    for override, key in (("train.backbone_lr_mult=0.1", "train.backbone_lr_mult"), ("model.init_exclude=[a]", "model.init_exclude")):
        with pytest.raises(RecipeError, match=f"^{key}: .* model.init_from"):
            load_recipe(folder_recipe(root / "three"), [override])
    other = {"data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [8]}, "train": {"epochs": 1, "device": "cpu"}}
    other["model"]["init_from"] = str(src)
    with pytest.raises(RecipeError, match="no tensor of .* matches this model by name and shape"):
        powertrain.train(other, out=tmp_path / "y", callbacks=[])


@pytest.fixture(scope="module")
def digits():
    return data.build({"name": "digits"}, seed=0)


def mlp(meta):
    torch.manual_seed(0)
    return models.build({"name": "mlp", "hidden": [16, 16]}, meta)  # 1, 3, 5: Linear layers


def test_freeze_keeps_frozen_parameters_bit_equal(digits):
    net = mlp(digits.meta)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = TrainConfig(max_steps=1, batch_size=64, optimizer="adamw", weight_decay=0.1, freeze=["1.*", "*.bias"],
                      device="cpu", log_every=100)
    t = Trainer(net, digits, cfg, callbacks=[], meter=False).fit()
    for k, v in t.model.state_dict().items():
        frozen = k.startswith("1.") or k.endswith(".bias")
        assert torch.equal(v, before[k]) == frozen, k
        assert t.model.get_parameter(k).requires_grad != frozen
    assert sum(len(g["params"]) for g in t.optimizer.param_groups) == 2  # 3.weight and 5.weight
    with pytest.raises(RecipeError) as e:
        Trainer(mlp(digits.meta), digits, TrainConfig(freeze=["fc.*"], device="cpu"), callbacks=[], meter=False)
    assert str(e.value).startswith("train.freeze: pattern 'fc.*' matches no parameter; parameter names are like 1.weight")
    with pytest.raises(RecipeError, match="freezes every parameter"):
        Trainer(mlp(digits.meta), digits, TrainConfig(freeze=["*"], device="cpu"), callbacks=[], meter=False)


def test_backbone_lr_multiplier_groups(digits):
    net = mlp(digits.meta)
    load_partial(net, {k: v for k, v in mlp(digits.meta).state_dict().items() if not k.startswith("5.")})
    cfg = TrainConfig(max_steps=4, batch_size=64, lr=0.01, backbone_lr_mult=0.1, schedule="step", step_size=2, gamma=0.5,
                      freeze=["1.bias"],
                      device="cpu", log_every=100)
    t = Trainer(net, digits, cfg, callbacks=[], meter=False)
    head, backbone = t.optimizer.param_groups
    assert head["lr"] == pytest.approx(0.01) and backbone["lr"] == pytest.approx(0.001)
    assert [id(p) for p in head["params"]] == [id(net[5].weight), id(net[5].bias)]
    assert [id(p) for p in backbone["params"]] == [id(net[1].weight), id(net[3].weight), id(net[3].bias)]  # 1.bias frozen
    t.fit()
    assert head["lr"] == pytest.approx(0.0025) and backbone["lr"] == pytest.approx(0.00025)  # one schedule scales both
    with pytest.warns(UserWarning, match="backbone_lr_mult is ignored"):  # nothing loaded: one group at lr
        plain = Trainer(mlp(digits.meta), digits, cfg, callbacks=[], meter=False)
    assert len(plain.optimizer.param_groups) == 1
