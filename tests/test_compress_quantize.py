"""Quantization: int8 outputs close to fp32, the int8 file >= 3x smaller than the fp32 checkpoint for a
Linear-heavy model (MLP, GRU, LSTM), int8 weights within half a step of the fp32 ones, the saved model
reloads bit for bit; static int8 for a CNN; the refusals name the model and the way out."""
import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

import powertrain
from powertrain.shrink import export, load_model, prune, quantize
from powertrain.cli.shrink import add_commands
from powertrain.models.int8 import quantize_model
from powertrain.errors import RecipeError, RunDirError

RNN = {"name": "rnn", "hidden": 64, "bidirectional": True, "pool": "mean"}  # as mnist1d-gru, on 8 rows of 8 pixels


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("q")
    out = {"mlp": powertrain.train("digits-mlp", ["train.epochs=2"], out=root / "mlp", callbacks=[]).dir}
    for cell in ("gru", "lstm"):
        recipe = {"data": {"name": "digits"}, "model": {**RNN, "cell": cell},
                  "train": {"max_steps": 30, "batch_size": 64, "lr": 3e-3, "device": "cpu"}}
        out[cell] = powertrain.train(recipe, out=root / cell, callbacks=[]).dir
    out["cnn"] = powertrain.train("digits-cnn", ["train.max_steps=20"], out=root / "cnn", callbacks=[]).dir
    return out


def checkpoint_file(run_dir):
    return sorted((run_dir / "checkpoints").glob("step-*"))[-1] / "model.safetensors"


def close_to_fp32(parent, child, x):
    fp32, _, _ = load_model(parent)
    int8, _, _ = load_model(child)  # rebuilt from the recipe and the int8 file
    with torch.no_grad():
        a, b = fp32(x), int8(x)
    assert (a - b).abs().max() <= 0.05 * a.abs().max()
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.95
    return int8


@pytest.mark.parametrize("name", ["mlp", "gru", "lstm"])
def test_dynamic_int8_is_3x_smaller_close_and_reloads_exactly(runs, name, tmp_path):
    parent = runs[name]
    child = quantize(parent, out=tmp_path / "q", repeats=5, warmup=1)
    report = json.loads((child / "derived.json").read_text())["report"]
    int8_file = child / "checkpoints" / "quantized.safetensors"
    assert report["size_bytes"] == {"fp32": checkpoint_file(parent).stat().st_size, "int8": int8_file.stat().st_size}
    assert report["size_ratio"] >= 3
    assert report["latency_s_per_sample"]["fp32"] > 0 and report["latency_s_per_sample"]["int8"] > 0
    fp32, _, trainer = load_model(parent)
    x = trainer.data.test.tensors[0][:200]
    int8 = close_to_fp32(parent, child, x)
    with torch.no_grad():  # the file holds exactly the model quantize() evaluated
        assert torch.equal(int8(x), quantize_model(fp32, "dynamic")(x))
    ev, before = (json.loads((d / "eval.json").read_text())["test"] for d in (child, parent))
    assert abs(ev["accuracy"] - before["accuracy"]) <= 0.03
    bill = json.loads((child / "bill.json").read_text())
    assert bill["params"] == sum(p.numel() for p in fp32.parameters()) and bill["steps"] == 0


def test_int8_weights_are_within_half_a_step_of_fp32(runs, tmp_path):
    child = quantize(runs["mlp"], out=tmp_path / "q", repeats=2, warmup=0)
    fp32, q = load_file(str(checkpoint_file(runs["mlp"]))), load_file(str(child / "checkpoints" / "quantized.safetensors"))
    for k in ("1.weight", "4.weight", "7.weight"):
        scale, zp = float(q[f"{k}.__scale"][0]), int(q[f"{k}.__zero_point"][0])
        assert q[k].dtype == torch.int8 and zp == 0  # symmetric per tensor
        # half a step: scale = max|w| / 127.5, so the largest weight lands on the clamp at exactly half a step
        assert ((q[k].double() - zp) * scale - fp32[k].double()).abs().max() <= scale * 0.5001
        assert fp32[f"{k[:-6]}bias"].dtype == q[f"{k[:-6]}bias"].dtype == torch.float32  # biases stay fp32


def test_static_int8_cnn(runs, tmp_path):
    child = quantize(runs["cnn"], mode="static", out=tmp_path / "s", repeats=2, warmup=0)
    report = json.loads((child / "derived.json").read_text())["report"]
    assert any("ConvReLU2d" in layer for layer in report["quantized_layers"])
    _, _, trainer = load_model(runs["cnn"])
    close_to_fp32(runs["cnn"], child, trainer.data.test.tensors[0][:200])


def test_refusals_name_the_model_and_the_way_out(runs, tmp_path):
    with pytest.raises(RecipeError, match="not model 'rnn'.*--mode dynamic"):
        quantize(runs["gru"], mode="static", out=tmp_path / "a")
    with pytest.raises(RecipeError, match="--mode"):
        quantize(runs["mlp"], mode="int4", out=tmp_path / "b")
    child = quantize(runs["mlp"], out=tmp_path / "c", repeats=2, warmup=0)
    with pytest.raises(RunDirError, match="quantized .*parent"):
        prune(child, out=tmp_path / "d")
    with pytest.raises(RunDirError, match="quantized .*parent"):
        quantize(child, out=tmp_path / "e")
    with pytest.raises(RecipeError, match="int8 .*export its parent"):
        export(child, format="onnx")
    copied = export(child, format="safetensors", out=tmp_path / "int8.safetensors")
    assert (tmp_path / "int8.safetensors").read_bytes() == (child / "checkpoints" / "quantized.safetensors").read_bytes()
    assert copied["bytes"] == (tmp_path / "int8.safetensors").stat().st_size


def test_quantize_command(runs, tmp_path, capsys):
    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers(dest="command"))
    args = p.parse_args(["quantize", str(runs["mlp"]), "--repeats", "3", "--out", str(tmp_path / "q")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "size on disk (bytes)" in out and "latency batch 64 (ms)" in out and "derived run (quantize of" in out
    args = p.parse_args(["quantize", str(runs["mlp"]), "--threads", "two", "--out", str(tmp_path / "r")])
    with pytest.raises(RecipeError, match="--threads"):
        args.func(args)


def test_eval_reads_the_int8_model_and_resume_refuses(runs, tmp_path):
    child = quantize(runs["mlp"], out=tmp_path / "q", repeats=2, warmup=1)
    saved = json.loads((child / "eval.json").read_text())["test"]
    assert powertrain.evaluate(child)["accuracy"] == pytest.approx(saved["accuracy"])
    with pytest.raises(RunDirError, match="cannot be resumed"):
        powertrain.resume(child, callbacks=[])
    assert json.loads((child / "eval.json").read_text())["test"] == saved  # nothing overwritten

