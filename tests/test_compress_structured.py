"""Structured pruning (channels with Torch-Pruning, attention heads by hand): the pruned model computes
what the parent computes with the removed channels or heads silenced, its FLOPs match an analytic count
of the smaller shape, its recipe rebuilds it, and the derived run is read by eval, predict, report and
export like any run; the command's refusals."""
import argparse
import json
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import copy

import powertrain
from powertrain import data, models
from powertrain.shrink import export, prune_channels, prune_heads
from powertrain.cli.shrink import add_commands
from powertrain.shrink.structured import remove_channels
from powertrain.data import DataMeta
from powertrain.errors import MissingExtra, RecipeError


def cnn_flops(c_in: int, convs: list[int], hw: int, dense: list[int], classes: int) -> int:
    """Forward FLOPs (2 per multiply-add) of the `cnn` model: 3x3 'same' convs, each followed by a 2x2 pool."""
    total, c = 0, c_in
    for c_out in convs:
        total += 2 * c * c_out * 9 * hw * hw
        c, hw = c_out, hw // 2
    widths = [c * hw * hw, *dense, classes]
    return total + sum(2 * a * b for a, b in zip(widths[:-1], widths[1:]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("s")
    return {"mlp": powertrain.train("digits-mlp", ["train.max_steps=40"], out=root / "mlp", callbacks=[]).dir,
            "cnn": powertrain.train("digits-cnn", ["train.max_steps=20"], out=root / "cnn", callbacks=[]).dir}


def test_removed_channels_are_the_parent_with_those_channels_zeroed():
    torch.manual_seed(0)
    parent = models.build({"name": "cnn", "conv": [8, 16], "dense": [32]}, DataMeta((1, 12, 12), "multiclass", 5))
    x = torch.randn(4, 1, 12, 12)
    pruned = remove_channels(copy.deepcopy(parent), x[:1], 0.5)
    assert [m.out_channels for m in pruned if isinstance(m, nn.Conv2d)] == [4, 8]
    assert [m.out_features for m in pruned if isinstance(m, nn.Linear)] == [16, 5]  # the output keeps its width
    reference = copy.deepcopy(parent)
    with torch.no_grad():  # zero, in the parent, every filter / unit the pruned model no longer has
        for big, small in ((reference[0], pruned[0]), (reference[3], pruned[3]), (reference[7], pruned[7])):
            keep = torch.zeros(big.weight.shape[0], dtype=torch.bool)
            for row in small.bias:  # a kept filter keeps its bias: random floats, all distinct
                keep |= big.bias == row
            big.weight[~keep] = 0
            big.bias[~keep] = 0
            assert int(keep.sum()) == small.weight.shape[0]
        assert torch.allclose(pruned(x), reference(x), atol=1e-5)
    assert models.count_params(pruned) == (1 * 9 + 1) * 4 + (4 * 9 + 1) * 8 + (8 * 9 + 1) * 16 + (16 + 1) * 5


def test_pruned_run_has_fewer_flops_and_bytes_and_loads_everywhere(runs, tmp_path):
    child = prune_channels(runs["cnn"], channels=0.5, steps=3, out=tmp_path / "c", callbacks=[], repeats=3, warmup=1)
    recipe = powertrain.load_recipe(child / "recipe.yaml")
    assert recipe.model.conv == [16, 32] and recipe.model.dense == [64]  # digits-cnn: conv [32, 64], dense [128]
    report = json.loads((child / "derived.json").read_text())["report"]
    f = report["figures"]
    assert f["parent"]["flops_per_sample"] == cnn_flops(1, [32, 64], 8, [128], 10)
    assert f["pruned"]["flops_per_sample"] == cnn_flops(1, [16, 32], 8, [64], 10)
    bill = json.loads((child / "bill.json").read_text())
    assert bill["flops"]["per_sample_forward"] == f["pruned"]["flops_per_sample"]
    weights = sorted((child / "checkpoints").glob("step-*"))[-1] / "model.safetensors"
    assert weights.stat().st_size == f["pruned"]["bytes"] < f["parent"]["bytes"] / 3
    by_hand = (9 + 1 + 2) * 16 + (16 * 9 + 1 + 2) * 32 + (32 * 2 * 2 + 1) * 64 + (64 + 1) * 10  # conv+BN, fc1, fc2
    assert bill["params"] == f["pruned"]["params"] == by_hand
    for name in ("parent", "pruned"):
        assert set(f[name]["latency_s"]) == {"1", "64"} and f[name]["j_per_sample"] > 0
        assert f[name]["energy_method"].startswith(("estimated", "measured", "mixed"))
    saved = json.loads((child / "eval.json").read_text())["test"]
    assert powertrain.evaluate(child)["accuracy"] == pytest.approx(saved["accuracy"])  # eval: rebuilt from the recipe
    from powertrain.report.html import report as html_report

    page = html_report([child], out=tmp_path / "r.html")
    assert "derived from" in (tmp_path / "r.html").read_text() and page
    result = export(child, format="safetensors", out=tmp_path / "m.safetensors")
    assert load_file(str(tmp_path / "m.safetensors"))["0.weight"].shape[0] == 16 and result["bytes"] > 0


def test_predict_on_a_pruned_mlp(runs, tmp_path):
    child = prune_channels(runs["mlp"], channels=0.25, epochs=0, out=tmp_path / "m", repeats=2, warmup=0)
    assert powertrain.load_recipe(child / "recipe.yaml").model.hidden == [192, 96]  # 256, 128 less a quarter
    raw = data.build({"name": "digits", "normalize": False}).test.tensors[0][:5].numpy()
    np.save(tmp_path / "x.npy", raw)  # raw pixels: predict standardises them as training did
    model, _, trainer = powertrain.shrink.load_model(child)
    with torch.no_grad():
        want = model(trainer.data.test.tensors[0][:5]).argmax(1).tolist()
    from powertrain.infer.predict import predict

    result = predict(child, tmp_path / "x.npy")
    assert [int(p["class"]) for p in result["predictions"]] == want
    assert result["bill"]["flops"]["per_sample_forward"] == 2 * (64 * 192 + 192 * 96 + 96 * 10)


def test_removed_heads_are_the_parent_with_those_heads_silenced():
    from powertrain.shrink.heads import remove_heads
    from powertrain.measure import forward_flops
    from powertrain.models.transformer import Block

    torch.manual_seed(0)
    d, n, hs, T = 24, 6, 4, 5
    parent = nn.Sequential(Block(d, n, 32))
    x = torch.randn(2, T, d)
    pruned = copy.deepcopy(parent)
    assert remove_heads(pruned, 0.5) == {"n_head": 3, "head_dim": hs}
    a = parent[0].attn
    q, k, v = a.c_attn.weight.detach().view(3, n, hs, d)  # each head's score, from the parent's weights
    qb, kb, vb = a.c_attn.bias.detach().view(3, n, hs)
    score = [sum(float(t[h].pow(2).sum()) for t in (q, k, v, qb, kb, vb))
             + float(a.c_proj.weight.detach()[:, h * hs:(h + 1) * hs].pow(2).sum()) for h in range(n)]
    kept = sorted(sorted(range(n), key=lambda h: -score[h])[:3])
    reference = copy.deepcopy(parent)
    with torch.no_grad():  # a head whose output columns are zero adds nothing to the residual stream
        for h in set(range(n)) - set(kept):
            reference[0].attn.c_proj.weight[:, h * hs:(h + 1) * hs] = 0
        assert torch.allclose(pruned(x), reference(x), atol=1e-5)
        cols = torch.cat([torch.arange(h * hs, (h + 1) * hs) for h in kept])
        assert torch.equal(pruned[0].attn.c_proj.weight, a.c_proj.weight[:, cols])
    inner = 3 * hs  # qkv and projection matmuls, scores and weighted values of 3 heads, the MLP
    by_hand = 2 * T * d * 3 * inner + 2 * T * inner * d + 2 * (2 * T * T * inner) + 2 * (2 * T * d * 32)
    assert forward_flops(pruned, x[:1]).total == by_hand


def test_head_pruned_transformer_run_loads_from_its_recipe(tmp_path):
    tiny = {"data": {"name": "mnist1d"}, "train": {"max_steps": 3, "batch_size": 50, "device": "cpu"},
            "model": {"name": "transformer", "d_model": 16, "n_head": 4, "n_layer": 1, "patch": 5, "patch_stride": 5}}
    run = powertrain.train(tiny, out=tmp_path / "t", callbacks=[]).dir
    child = prune_heads(run, heads=0.5, steps=2, out=tmp_path / "h", callbacks=[], repeats=2, warmup=0)
    parent_recipe, recipe = (powertrain.load_recipe(d / "recipe.yaml") for d in (run, child))
    assert recipe.model.n_head == parent_recipe.model.n_head // 2
    assert recipe.model.head_dim == parent_recipe.model.d_model // parent_recipe.model.n_head
    f = json.loads((child / "derived.json").read_text())["report"]["figures"]
    assert f["pruned"]["flops_per_sample"] < f["parent"]["flops_per_sample"] and f["pruned"]["bytes"] < f["parent"]["bytes"]
    saved = json.loads((child / "eval.json").read_text())["test"]
    assert powertrain.evaluate(child)["accuracy"] == pytest.approx(saved["accuracy"])
    with pytest.raises(RecipeError, match="not model 'transformer'.*--sparsity"):
        prune_channels(run, out=tmp_path / "x")


def parser():
    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers(dest="command"))
    return p


def test_channels_command_and_refusals(runs, tmp_path, capsys, monkeypatch):
    args = parser().parse_args(["prune", str(runs["mlp"]), "--channels", "0.5", "--epochs", "0", "--out", str(tmp_path / "x")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "FLOPs / sample" in out and "latency batch 64" in out and f"derived run written to {tmp_path / 'x'}" in out
    for argv, words in ((["--channels", "1"], "--channels"), (["--channels", "abc"], "--channels"),
                        (["--channels", "0.5", "--sparsity", "0.5"], "give one")):
        args = parser().parse_args(["prune", str(runs["mlp"]), *argv, "--out", str(tmp_path / "y")])
        with pytest.raises(RecipeError, match=words):
            args.func(args)
    rnn = powertrain.train({"data": {"name": "digits"}, "model": {"name": "rnn", "hidden": 8},
                            "train": {"max_steps": 2, "device": "cpu"}}, out=tmp_path / "rnn", callbacks=[]).dir
    with pytest.raises(RecipeError, match="not model 'rnn'.*--sparsity"):
        prune_channels(rnn, out=tmp_path / "y")
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # the extra not installed
    with pytest.raises(MissingExtra, match=r"pip install 'powertrain\[shrink\]'"):
        prune_channels(runs["mlp"], out=tmp_path / "y")
    assert not (tmp_path / "y").exists()  # refused before anything was written
