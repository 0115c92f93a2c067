"""Recipe validation: every bad input is one line naming the dotted key, the expectation and a fix."""
import subprocess
import sys

import pytest

from powertrain import load_recipe
from powertrain.errors import RecipeError
from powertrain.recipe import builtin_recipes


def error_of(source, overrides=()):
    with pytest.raises(RecipeError) as exc:
        load_recipe(source, list(overrides))
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_builtin_recipes_all_parse():
    names = builtin_recipes()
    assert {"xor", "digits-mlp", "mnist1d-cnn"} <= set(names)
    for name in names:
        assert load_recipe(name).name == name


def test_overrides_are_typed():
    r = load_recipe("mnist1d-cnn", ["train.lr=3e-3", "train.epochs=5", "model.conv=[8, 16]", "model.pool=[2, 2]",
                                     "train.grad_clip=1"])
    assert r.train.lr == pytest.approx(3e-3) and r.train.epochs == 5 and r.model.options()["conv"] == [8, 16]


def test_unknown_key_suggests_closest():
    msg = error_of("xor", ["train.lrr=0.1"])
    assert msg.startswith("train.lrr: unknown key (did you mean 'lr'?)") and "allowed keys:" in msg


def test_unknown_section_key():
    assert "did you mean 'train'" in error_of("xor", ["trian.lr=0.1"])


def test_wrong_type():
    msg = error_of("xor", ["train.epochs=many"])
    assert msg.startswith("train.epochs: expected a valid integer") and "'many'" in msg


def test_out_of_range():
    msg = error_of("xor", ["train.lr=-1"])
    assert msg.startswith("train.lr: expected greater than 0") and "-1" in msg


def test_literal_lists_allowed_values():
    msg = error_of("xor", ["train.optimizer=adm"])
    assert "train.optimizer" in msg and "'adam'" in msg and "'sgd'" in msg


def test_unknown_model_name_and_option():
    assert "did you mean 'mlp'" in error_of("xor", ["model.name=mpl"])
    msg = error_of("xor", ["model.hiden=[3]"])
    assert msg.startswith("model.hiden: unknown key (did you mean 'hidden'?)")
    assert error_of("xor", ["model.hidden=wide"]).startswith("model.hidden: expected a valid list")


def test_model_cross_field_check():
    assert error_of("mnist1d-cnn", ["model.conv=[8]"]) == "model: pool has 3 entries but conv has 1; give one per conv"


def test_dataset_option_checked():
    assert error_of("digits-mlp", ["data.val_fraction=2"]).startswith("data.val_fraction: expected less than 1")


def test_accumulate_must_divide_batch():
    assert error_of("digits-mlp", ["train.accumulate=5"]).startswith("train.accumulate: 5 must divide")


def test_malformed_override_and_missing_recipe(tmp_path):
    assert "expected key.path=value" in error_of("xor", ["train.lr"])
    assert "did you mean 'xor'" in error_of("xorr")
    assert "not found" in error_of(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    assert "invalid YAML" in error_of(str(bad))


def test_recipe_file_path(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("data: {name: xor}\nmodel: {name: mlp, hidden: [4]}\ntrain: {epochs: 3}\n")
    r = load_recipe(str(f))
    assert r.name == "mine" and r.model.options() == {"hidden": [4]}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "powertrain", *args], capture_output=True, text=True, timeout=120)


def test_cli_bad_override_exits_2_with_one_line():
    p = run_cli("train", "xor", "train.lr=-1")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "train.lr" in p.stderr
    assert "Traceback" not in p.stderr


def test_cli_lists_recipes():
    p = run_cli("recipes")
    assert p.returncode == 0
    lines = p.stdout.strip().splitlines()
    assert any(line.startswith("mnist1d-cnn") for line in lines) and len(lines) == len(builtin_recipes())


def test_reference_doc_lists_every_key():
    from pathlib import Path

    from powertrain.recipe import EarlyStop, RunConfig, TrainConfig

    doc = (Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
    for cls in (TrainConfig, RunConfig, EarlyStop):
        for key in cls.model_fields:
            assert key in doc, f"docs/recipes.md does not document {cls.__name__}.{key}"


def test_relative_data_path_resolves_next_to_the_recipe(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.csv").write_text("a,y\n1,0\n")
    (tmp_path / "r.yaml").write_text("data: {name: csv, path: data/t.csv, target: y}\nmodel: {name: mlp}\n")
    monkeypatch.chdir(tmp_path.parent)  # not the recipe's folder
    assert load_recipe(str(tmp_path / "r.yaml")).data.model_dump()["path"] == str(tmp_path / "data" / "t.csv")
    (tmp_path / "r2.yaml").write_text("data: {name: csv, path: elsewhere.csv, target: y}\nmodel: {name: mlp}\n")
    assert load_recipe(str(tmp_path / "r2.yaml")).data.model_dump()["path"] == "elsewhere.csv"  # left for the cwd

