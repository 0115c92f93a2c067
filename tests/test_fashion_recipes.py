"""The Fashion-MNIST recipes: fashion-convnet is the source documents' ConvNet (seed 001) corrected with
padding=1, layer for layer (compared with the class on docs/examples.md, weights copied across); both
recipes run end to end through the CLI on small files in Fashion-MNIST's format."""
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from powertrain import cli, load_recipe, models
from powertrain.data import DataMeta
from test_documents_examples import documents_classes

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from browser import check_report  # noqa: E402
from datafiles import write_idx_dataset  # noqa: E402

FASHION = DataMeta((1, 28, 28), "multiclass", 10)


def compute_layers(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple, tuple]]:
    """(type, input shape, output shape) of every Conv2d and Linear, in the order they run."""
    seen = []
    record = lambda m, a, out: seen.append((type(m).__name__, tuple(a[0].shape), tuple(out.shape)))  # noqa: E731
    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model(x)
    for h in hooks:
        h.remove()
    return seen


def test_fashion_convnet_is_the_documents_class_with_padding_1():
    recipe = load_recipe("fashion-convnet")
    assert not recipe.model.model_dump().get("batch_norm") and not recipe.model.model_dump().get("dropout")
    ours = models.build(recipe.model.model_dump(), FASHION)
    theirs = documents_classes()["ConvNetPadded"][0]()

    # parameters of the class, layer by layer: conv (in*k*k + 1) * out, linear (in + 1) * out
    expected = (1 * 9 + 1) * 32 + (32 * 9 + 1) * 64 + (64 * 7 * 7 + 1) * 128 + (128 + 1) * 10
    assert expected == 421_642 == models.count_params(theirs) == models.count_params(ours)
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]

    x = torch.randn(5, 1, 28, 28)
    assert compute_layers(ours, x) == compute_layers(theirs, x) == [
        ("Conv2d", (5, 1, 28, 28), (5, 32, 28, 28)), ("Conv2d", (5, 32, 14, 14), (5, 64, 14, 14)),
        ("Linear", (5, 3136), (5, 128)), ("Linear", (5, 128), (5, 10))]
    with torch.no_grad():  # the same weights give the same outputs: the same function, flatten order included
        for a, b in zip(ours.parameters(), theirs.parameters()):
            a.copy_(b)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


@pytest.fixture
def fashion_dir(tmp_path):
    write_idx_dataset(tmp_path / "fashion", n_train=60, n_test=20)
    return tmp_path / "fashion"


@pytest.mark.parametrize("recipe,overrides,params", [
    ("fashion-convnet", ["train.max_steps=3"], 421_642),
    ("fashion-speedrun", ["train.max_steps=3", "train.batch_size=16"], 390_858),
    # the GPU recipe's CPU smoke run (`train.max_steps=20 data.train_limit=2000` on the real data), smaller
    ("fashion-resnet", ["train.max_steps=2", "train.batch_size=16", "data.train_limit=32"], 696_042),
])
def test_recipe_runs_end_to_end_through_the_cli(recipe, overrides, params, fashion_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", recipe, *overrides, f"data.path={fashion_dir}", "--out", str(out)]) == 0
    results = json.loads((out / "eval.json").read_text())
    assert results["step"] == int(overrides[0].split("=")[1]) and results["stop_reason"] == "completed"
    assert 0 <= results["test"]["accuracy"] <= 1 and sum(map(sum, results["test"]["confusion_matrix"])) == 20
    bill = json.loads((out / "bill.json").read_text())
    assert bill["params"] == params
    assert f"run written to {out}" in capsys.readouterr().out
    check_report(out, {"confusion"})  # its report page loads in Chromium with no error
