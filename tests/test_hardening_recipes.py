"""Issue 21, recipes: strict YAML (duplicate keys, nesting depth, alias expansion), strict numbers (a bool is
not an int), sizes that are sizes, 32-bit seeds, and a model refused before allocation when it cannot fit.
Each class has the member the issue names and others it does not."""
from __future__ import annotations

import resource
import subprocess
import sys

import pytest
import torch

from powertrain import cli, models
from powertrain.data import DataMeta
from powertrain.errors import ModelError, RecipeError
from powertrain.models.check import TRAIN_BYTES_PER_PARAM, check_memory
from powertrain.recipe import load_recipe
from powertrain.recipe.strict import MAX_DEPTH, MAX_NODES, load_yaml


def one_line(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("powertrain: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def write(tmp_path, text: str, name: str = "r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


BASE = "data: {name: xor}\nmodel: {name: mlp, hidden: [4]}\n"
LAUGHS = ("&a [" + ", ".join(['"lol"'] * 9) + "]", *(f"&{c} [" + ", ".join([f"*{p}"] * 9) + "]"
                                                     for p, c in zip("abcdefgh", "bcdefghi")))


def bomb(where: str) -> str:
    """A billion-laughs document: nine levels of nine aliases (9^9 strings), the anchors in a list at `where`."""
    return BASE + f"{where}: [{', '.join(LAUGHS)}]\n"


# ---------------------------------------------------------------- YAML
@pytest.mark.parametrize("text, key", [
    (BASE + "train: {epochs: 1, epochs: 2}\n", "epochs"),  # the class: the last one won silently
    (BASE + "run:\n  seed: 1\n  out: x\n  seed: 2\n", "seed"),  # block style, nested
    (BASE + "data: {name: digits}\n", "data"),  # a whole section twice
])
def test_a_key_given_twice_is_refused(tmp_path, capsys, text, key):
    err = one_line(capsys, ["train", write(tmp_path, text)])
    assert f"key '{key}' appears twice" in err and "line" in err


def test_a_merge_key_is_not_a_duplicate():
    raw = load_yaml("base: &b {epochs: 3, lr: 0.1}\ntrain: {<<: *b, epochs: 5}", "r")
    assert raw["train"] == {"epochs": 5, "lr": 0.1}


@pytest.mark.parametrize("where", ["description", "model.hidden"])
def test_a_billion_laughs_file_ends_in_one_line(tmp_path, capsys, where):
    text = bomb("description") if where == "description" else BASE.replace("hidden: [4]", "hidden: [4], x: 1") + \
        "y: [" + ", ".join(LAUGHS) + "]\n"
    err = one_line(capsys, ["train", write(tmp_path, text)])
    assert f"at most {MAX_NODES:,}" in err or "unknown key" in err


def test_a_billion_laughs_bomb_in_an_allowed_place_is_refused_before_it_is_walked(tmp_path, capsys):
    """The issue's case: the expansion hides under a key the schema takes (its error message would print it)."""
    err = one_line(capsys, ["train", write(tmp_path, bomb("description"))])
    assert "once its aliases are expanded" in err and len(err) < 400


def test_a_billion_laughs_bomb_in_an_override_and_in_a_dict(capsys):
    value = "[" + ", ".join(LAUGHS) + "]"
    err = one_line(capsys, ["train", "xor", f"description={value}"])
    assert "once its aliases are expanded" in err
    shared = ["lol"] * 9
    for _ in range(8):  # the Python form: one list referenced nine times per level
        shared = [shared] * 9
    with pytest.raises(RecipeError, match="once its aliases are expanded"):
        load_recipe({"data": {"name": "xor"}, "model": {"name": "mlp"}, "description": shared})


def test_an_alias_that_contains_itself_is_refused(tmp_path, capsys):
    err = one_line(capsys, ["train", write(tmp_path, BASE + "description: &x [1, *x]\n")])
    assert "contains it" in err


def test_the_bomb_in_a_fresh_process_ends_without_hanging(tmp_path):
    """The CLI as a user runs it; a hang would hit the timeout (a guard, not a speed bar)."""
    r = subprocess.run([sys.executable, "-m", "powertrain", "train", write(tmp_path, bomb("description"))],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "aliases" in r.stderr, r.stderr[-500:]


@pytest.mark.parametrize("text", [
    BASE.replace("hidden: [4]", "hidden: " + "[" * 500 + "4" + "]" * 500),  # the 500-deep list
    BASE + "description: " + "{a: " * 500 + "1" + "}" * 500 + "\n",  # a deep mapping
    BASE + "description:\n" + "".join("  " * i + "- \n" for i in range(1, 200)),  # block style
])
def test_deep_nesting_is_one_line(tmp_path, capsys, text):
    err = one_line(capsys, ["train", write(tmp_path, text)])
    assert f"deeper than {MAX_DEPTH} levels" in err


def test_deep_nesting_in_an_override_and_in_a_dict(capsys):
    err = one_line(capsys, ["train", "xor", "model.hidden=" + "[" * 400 + "4" + "]" * 400])
    assert "deeper than" in err
    deep: list = [4]
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = [deep]
    with pytest.raises(RecipeError, match="deeper than"):
        load_recipe({"data": {"name": "xor"}, "model": {"name": "mlp", "hidden": deep}})


def test_scientific_notation_is_a_number_in_a_file(tmp_path):
    r = load_recipe(write(tmp_path, BASE + "train: {lr: 3e-3, max_steps: 1e3}\n"))
    assert r.train.lr == pytest.approx(0.003) and r.train.max_steps == 1000 and type(r.train.max_steps) is int


# ---------------------------------------------------------------- numbers
@pytest.mark.parametrize("override, fragment", [
    ("train.batch_size=true", "train.batch_size: expected a whole number, not a yes/no value"),  # the issue's
    ("train.epochs=yes", "train.epochs: expected a whole number, not a yes/no value"),
    ("train.lr=true", "train.lr: expected a number, not a yes/no value"),
    ("model.hidden=[16, false]", "model.hidden: item 1 (False): expected a whole number"),
    ("train.betas=[0.9, true]", "train.betas: item 1 (True): expected a number"),
    ("train.keep_checkpoints=1.5", "train.keep_checkpoints"),
    ("train.lr=.nan", "train.lr: expected a finite number"),
    ("train.grad_clip=.inf", "train.grad_clip: expected a finite number"),
])
def test_a_bool_or_a_non_finite_value_is_not_a_number(capsys, override, fragment):
    assert fragment in one_line(capsys, ["train", "xor", override])


def test_a_quoted_number_in_a_file_is_text(tmp_path, capsys):
    err = one_line(capsys, ["train", write(tmp_path, BASE + "train: {batch_size: '64'}\n")])
    assert "train.batch_size: expected a whole number, not text (write 64 without quotes)" in err


def test_a_literal_of_numbers_takes_no_bool():
    """`channels: Literal[1, 3]` would take true as 1."""
    with pytest.raises(RecipeError, match="data.channels: expected a whole number, not a yes/no value"):
        load_recipe({"data": {"name": "image-folder", "path": ".", "channels": True}, "model": {"name": "cnn"}})


# ---------------------------------------------------------------- sizes
@pytest.mark.parametrize("override, fragment", [
    ("model.hidden=[-16]", "model.hidden: item 0 (-16): expected a size or count in [0, 2,147,483,647]"),  # the issue's
    ("model.hidden=[8, -1]", "model.hidden: item 1 (-1)"),
    ("model.hidden=[4294967296]", "model.hidden: item 0 (4294967296)"),
    ("data.num_workers=-2", "data.num_workers"),
])
def test_a_size_is_positive_and_bounded(capsys, override, fragment):
    assert fragment in one_line(capsys, ["train", "xor", override])


@pytest.mark.parametrize("recipe, override, layer", [
    ("xor", "model.hidden=[0]", "'1'"),
    ("digits-cnn", "model.dense=[0]", "would be empty"),
    ("xor", "model.hidden=[4, 0, 4]", "would be empty"),
])
def test_a_size_of_zero_makes_no_layer_and_is_refused_before_training(tmp_path, capsys, recipe, override, layer):
    err = one_line(capsys, ["train", recipe, override, "--out", str(tmp_path / "run")])
    assert "would be empty" in err and layer in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seed", ["36893488147419103232", "18446744073709551615", "4294967296", "-1", "1e10"])
def test_a_seed_beyond_32_bits_is_one_line(capsys, seed):
    assert "run.seed: expected a whole number in [0, 4294967295]" in one_line(capsys, ["train", "xor", f"run.seed={seed}"])


def test_the_largest_seed_trains(tmp_path):
    import powertrain

    run = powertrain.train("digits-mlp", ["run.seed=4294967295", "train.max_steps=2"], out=tmp_path / "r", callbacks=[])
    assert run.recipe.run.seed == 2**32 - 1 and (tmp_path / "r" / "eval.json").is_file()


# ---------------------------------------------------------------- memory
def test_a_model_too_large_for_memory_is_refused_before_allocation_with_the_figure():
    """digits-mlp with a width of 1e8 (the issue's): 64 x 1e8 + 1e8 + 1e8 x 10 + 10 parameters, counted on the meta
    device; the process's resident memory does not grow by the weights' size."""
    meta = DataMeta((64,), "multiclass", 10)
    width = 10**8
    params = 64 * width + width + width * 10 + 10  # the analytic count of Linear(64, w) + Linear(w, 10)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with pytest.raises(ModelError) as e:
        models.build({"name": "mlp", "hidden": [width]}, meta)
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert f"{params:,}" in str(e.value) and "GB" in str(e.value), str(e.value)
    assert grew < 4 * params / 10, f"{grew} bytes allocated: the weights were made"


def test_the_training_figure_counts_parameters_and_a_batchs_layer_outputs():
    """A small model refused against a small memory, passed against a large one; the figure's parameter count is
    that of the real model, and the layer outputs grow with the batch."""
    meta = DataMeta((64,), "multiclass", 10)
    spec = {"name": "mlp", "hidden": [32]}
    real = models.count_params(models.build(spec, meta))
    entry, opts = models.MODELS.get("mlp"), models.MODELS.options(spec)

    def refusal(batch: int, available: int) -> str:
        try:
            check_memory(lambda: entry.build(opts, meta), meta, batch, "model 'mlp'", available=available)
        except ModelError as e:
            return str(e)
        return ""

    assert refusal(64, 10**9) == ""
    small = refusal(64, TRAIN_BYTES_PER_PARAM * real)  # room for the parameters' training state, not the outputs
    assert f"{real:,} parameters" in small and "batch of 64" in small
    assert refusal(1, TRAIN_BYTES_PER_PARAM * real + 4 * (32 + 32 + 10) * 2) == ""  # a batch of one fits


def test_a_huge_batch_of_a_cnn_is_refused_on_its_layer_outputs():
    meta = DataMeta((1, 8, 8), "multiclass", 10)
    spec = {"name": "cnn", "conv": [8], "pool": [2], "dense": [16]}
    entry, opts = models.MODELS.get("cnn"), models.MODELS.options(spec)
    with pytest.raises(ModelError, match="of layer outputs for a batch of 100000000"):
        check_memory(lambda: entry.build(opts, meta), meta, 10**8, "model 'cnn'", available=10**10)
    assert torch.zeros(1).device.type == "cpu"  # the meta device was left


def test_on_a_gpu_the_training_figure_is_held_against_the_devices_free_memory(monkeypatch):
    """No GPU here: torch.cuda's answers are stood in, to show which memory the check reads on one (the
    device's free memory for training; the machine's for the weights, built on the CPU first)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10**8, 80 * 10**9))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    meta = DataMeta((64,), "multiclass", 10)
    with pytest.raises(ModelError, match=r"but NVIDIA H200 has 0\.1 GB available"):
        models.build({"name": "mlp", "hidden": [100_000]}, meta)  # 7.5 M parameters: 120 MB to train
    models.build({"name": "mlp", "hidden": [100_000]}, meta, device="cpu")  # on the CPU it fits
