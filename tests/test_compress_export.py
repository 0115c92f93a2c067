"""Export: ONNX parity with the torch model (<= 1e-4, fp32) for an MLP, a CNN and a tiny GPT, checked
again here with onnxruntime at another batch size against the checkpoint loaded by hand; safetensors
holds the final weights and the recipe; the command and its refusals."""
import argparse
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from safetensors.torch import load_file, load_model as load_st

import powertrain
from powertrain.train import lifecycle
from powertrain import models
from powertrain.shrink import export
from powertrain.cli.shrink import add_commands
from powertrain.errors import RecipeError
from powertrain.recipe import parse_recipe

TEXT = "".join(f"def f{i}(x):\n    return x * {i % 5}\n\n" for i in range(80))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("x")
    (root / "corpus.py").write_text(TEXT)
    gpt = {"data": {"name": "text", "path": str(root / "corpus.py"), "block_size": 16, "val_fraction": 0.1},
           "model": {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16},
           "train": {"max_steps": 5, "batch_size": 16, "lr": 1e-2, "device": "cpu"}}
    return {"mlp": powertrain.train("digits-mlp", ["train.max_steps=10"], out=root / "mlp", callbacks=[]).dir,
            "cnn": powertrain.train("digits-cnn", ["train.max_steps=10"], out=root / "cnn", callbacks=[]).dir,
            "gpt": powertrain.train(gpt, out=root / "gpt", callbacks=[]).dir}


def by_hand(run_dir):
    """The run's model rebuilt from recipe.yaml and its newest checkpoint, and 5 of its data samples."""
    run = lifecycle.build_trainer(parse_recipe(yaml.safe_load((run_dir / "recipe.yaml").read_text())), None, [])
    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    load_st(run.model, str(newest / "model.safetensors"))
    split = run.data.test or run.data.val
    return run.model.eval(), next(split.batches(torch.arange(5, 10), 5))[0]


@pytest.mark.parametrize("name", ["mlp", "cnn", "gpt"])
def test_onnx_parity(runs, name):
    result = export(runs[name], format="onnx")
    assert result["ok"] and result["max_abs_diff"] <= 1e-4 and result["bar"] == 1e-4
    assert result["path"] == str(runs[name] / "export" / "model.onnx")
    model, x = by_hand(runs[name])
    session = ort.InferenceSession(result["path"], providers=["CPUExecutionProvider"])
    theirs = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ours = model(x).numpy()
    assert theirs.shape == ours.shape and np.abs(theirs - ours).max() <= 1e-4


def test_safetensors_holds_the_final_weights_and_the_recipe(runs, tmp_path):
    result = export(runs["cnn"], format="safetensors", out=tmp_path / "cnn.safetensors")
    newest = sorted((runs["cnn"] / "checkpoints").glob("step-*"))[-1]
    ours, ref = load_file(result["path"]), load_file(str(newest / "model.safetensors"))
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
    from safetensors import safe_open

    with safe_open(result["path"], "pt") as f:
        recipe = parse_recipe(yaml.safe_load(f.metadata()["recipe"]))
    assert recipe.model.name == "cnn"
    net = models.build(recipe.model.model_dump(), powertrain.data.build(recipe.data.model_dump()).meta)
    load_st(net, result["path"])  # loads into the recipe's model as is


def test_export_command_and_refusals(runs, tmp_path, capsys):
    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers(dest="command"))
    args = p.parse_args(["export", str(runs["mlp"]), "--out", str(tmp_path / "m.onnx"), "--json"])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["path"] == str(tmp_path / "m.onnx") and result["ok"]
    for argv, words in ((["--samples", "1"], "--samples"), (["--samples", "many"], "--samples")):
        args = p.parse_args(["export", str(runs["mlp"]), *argv])
        with pytest.raises(RecipeError, match=words):
            args.func(args)
    with pytest.raises(RecipeError, match="--format"):
        export(runs["mlp"], format="tflite")
