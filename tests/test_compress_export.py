"""Export: ONNX parity with the torch model (<= 1e-4, fp32) for an MLP, a CNN and a tiny GPT, checked
again here with onnxruntime at another batch size against the checkpoint loaded by hand; onnxruntime on
raw inputs (the dataset's own units) gives what `powertrain predict` gives, for every model family and
kind of input that exports, and the file carries its metadata; safetensors holds the final weights and the
recipe; the command and its refusals."""
import argparse
import csv
import json
import sys
from pathlib import Path

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
from powertrain.infer.predict import predict
from powertrain.settings import VERSION
from powertrain.train.load import Units

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from datafiles import write_image_folder  # noqa: E402

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
    raw = Units(powertrain.data.build(parse_recipe(yaml.safe_load((runs[name] / "recipe.yaml").read_text()))
                                      .data.model_dump(), seed=0).meta).to_raw(x)  # the file takes raw inputs
    theirs = session.run(None, {session.get_inputs()[0].name: raw.numpy()})[0]
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


# ---------------------------------------------------------------- raw inputs: ONNX equals predict
DIGITS = {"name": "digits"}
FAMILIES = {  # name -> (recipe, overrides, how its raw inputs are written)
    "mlp": ("digits-mlp", [], "npy"),
    "cnn": ("digits-cnn", [], "npy"),
    "resnet": ({"data": DIGITS, "model": {"name": "resnet", "widths": [4, 8], "blocks": [1, 1]}}, [], "npy"),
    "rnn": ("mnist1d-gru", ["model.hidden=8"], "npy"),
    "transformer": ("mnist1d-transformer", ["model.d_model=16", "model.n_layer=1"], "npy"),
    "autoencoder": ({"data": {**DIGITS, "reconstruct": True}, "model": {"name": "autoencoder", "encoder": [16, 4]}},
                    [], "npy"),
    "regression": ("diabetes-linear", [], "csv"),
    "csv-table": ("csv-mlp", [], "table"),
    "image-folder": ({"data": {"name": "image-folder", "size": 12, "channels": 3},
                      "model": {"name": "cnn", "conv": [4], "pool": [2], "dense": [8]}}, [], "images"),
    "gpt": (None, [], "prompt"),
}


@pytest.fixture(scope="module")
def families(tmp_path_factory, runs):
    root = tmp_path_factory.mktemp("families")
    write_image_folder(root / "images", classes=("cat", "dog"), per_class=3, size=(12, 12))
    out = {"gpt": runs["gpt"]}
    for name, (recipe, over, _) in FAMILIES.items():
        if recipe is None:
            continue
        if name == "image-folder":
            recipe = {**recipe, "data": {**recipe["data"], "path": str(root / "images")}}
        out[name] = powertrain.train(recipe, ["train.max_steps=2", "train.batch_size=4", *over],
                                     out=root / name, callbacks=[]).dir
    out["images"] = root / "images"
    return out


def raw_inputs(name: str, run_dir, folder, images):
    """(the input predict reads, the same samples as an ONNX user feeds them: raw units, built here)."""
    how = FAMILIES[name][2]
    recipe = parse_recipe(yaml.safe_load((run_dir / "recipe.yaml").read_text()))
    if how == "npy":  # the dataset's own units: its loader without standardisation
        raw = powertrain.data.build({**recipe.data.model_dump(), "normalize": False}, seed=0)
        x = raw.test.tensors[0][:6].numpy() if raw.test is not None else raw.val.tensors[0][:6].numpy()
        np.save(folder / "x.npy", x)
        return folder / "x.npy", x.astype(np.float32)
    if how == "csv":  # rows of raw feature values
        raw = powertrain.data.build({**recipe.data.model_dump(), "normalize": False}, seed=0)
        x = raw.test.tensors[0][:6].numpy().astype(np.float64)
        np.savetxt(folder / "x.csv", x, delimiter=",")
        return folder / "x.csv", np.loadtxt(folder / "x.csv", delimiter=",").astype(np.float32)
    if how == "table":  # the CSV's own columns; the ONNX input: the numeric features in the run's order
        src = Path(powertrain.__file__).parent / "recipe" / "builtin" / "data" / "breast_cancer.csv"
        rows = list(csv.reader(open(src)))[:7]
        (folder / "x.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
        trainer = lifecycle.build_trainer(recipe, None, [])
        names = trainer.data.meta.extra["feature_names"]
        cols = {h: i for i, h in enumerate(rows[0])}
        return folder / "x.csv", np.array([[float(r[cols[n]]) for n in names] for r in rows[1:]], dtype=np.float32)
    if how == "images":  # pixels 0-255 of the files, read with PIL, in the run's size
        from PIL import Image

        files = sorted((images / "dog").iterdir())
        x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((12, 12)), dtype=np.float32).transpose(2, 0, 1)
                      for f in files])
        return images / "dog", x
    raise AssertionError(how)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_onnx_on_raw_inputs_equals_predict_and_carries_its_metadata(families, name, tmp_path):
    import onnx

    run_dir = families[name]
    result = export(run_dir, format="onnx", out=tmp_path / "m.onnx")
    assert result["ok"], result
    props = {p.key: p.value for p in onnx.load(result["path"]).metadata_props}
    meta_run = lifecycle.build_trainer(parse_recipe(yaml.safe_load((run_dir / "recipe.yaml").read_text())), None, [])
    meta = meta_run.data.meta
    assert props["powertrain_version"] == VERSION and props["task"] == meta.task
    assert json.loads(props["input_shape"]) == ["batch", *meta.input_shape]
    assert json.loads(props["class_names"]) == (meta.class_names or [])
    assert yaml.safe_load(props["recipe"]) == yaml.safe_load((run_dir / "recipe.yaml").read_text())
    session = ort.InferenceSession(result["path"], providers=["CPUExecutionProvider"])
    if name == "gpt":
        prompt = "def f"
        ids = meta.vocab.encode(prompt).reshape(1, -1).numpy()
        logits = session.run(None, {"input": ids})[0]
        first = meta.vocab.decode(torch.tensor([int(logits[0, -1].argmax())]))
        assert predict(run_dir, prompt, max_new_tokens=1)["predictions"][0]["text"] == prompt + first
        assert props["input_dtype"] == "int64"
        return
    given, x = raw_inputs(name, run_dir, tmp_path, families["images"])
    theirs = session.run(None, {"input": x})[0]
    r = predict(run_dir, given)
    if meta.task == "regression":  # predict's values are in the target's units; so is the ONNX output
        ours = np.array([[p["value"]] for p in r["predictions"]], dtype=np.float64)
        assert np.abs(theirs.reshape(ours.shape) - ours).max() <= 1e-4 * max(1.0, float(np.abs(ours).max()))
    else:
        ours = r["outputs"].numpy()
        assert theirs.shape == ours.shape and np.abs(theirs - ours).max() <= 1e-4, np.abs(theirs - ours).max()
    if meta.task == "multiclass":
        names = meta.class_names or [str(i) for i in range(theirs.shape[-1])]
        assert [p["class"] for p in r["predictions"]] == [names[i] for i in theirs.argmax(-1)]
    if meta.task == "binary":
        assert [p["class"] for p in r["predictions"]] == [meta.class_names[int(v > 0)] for v in theirs.reshape(-1)]


def test_a_model_the_exporter_cannot_take_is_one_line_and_predict_still_works(tmp_path, capsys):
    """A VAE draws its noise from a seeded generator, which torch's exporter cannot trace with a dynamic batch:
    one line naming the model and the way out; predict gives its reconstructions (the first of its outputs)."""
    vae = {"data": {**DIGITS, "reconstruct": True}, "model": {"name": "vae", "encoder": [8], "latent": 2,
                                                             "recon_loss": "mse"}}
    run = powertrain.train(vae, ["train.max_steps=2"], out=tmp_path / "vae", callbacks=[]).dir
    raw = powertrain.data.build({**DIGITS, "normalize": False}).test.tensors[0][:3].numpy()
    np.save(tmp_path / "x.npy", raw)
    r = predict(run, tmp_path / "x.npy")
    assert r["outputs"].shape == (3, 1, 8, 8) and all(p["mse"] >= 0 for p in r["predictions"])
    from powertrain import cli

    assert cli.main(["export", str(run), "--out", str(tmp_path / "v.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model 'vae'" in err and "--format safetensors" in err
    assert not (tmp_path / "v.onnx").exists() and not list(tmp_path.glob(".v.onnx*"))
