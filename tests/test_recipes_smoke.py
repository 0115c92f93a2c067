"""Every built-in recipe runs end to end in CI: a few steps of the recipe as shipped (architecture, data
pipeline, optimizer, schedule), a checkpoint, the final evaluation and the bill. Recipes with a test file
of their own (data generated in the real file format) are listed in ELSEWHERE, and this file checks that
those files really train them, so a new recipe cannot ship untested."""
import json
from pathlib import Path

import pytest

import powertrain
from powertrain.recipe import builtin_recipes
from browser import check_report

TESTS = Path(__file__).parent
TINY = ["train.max_steps=3", "train.log_every=1"]

HERE = {  # recipe -> extra overrides that keep it to seconds (the model is never changed)
    "xor": [],
    "digits-mlp": [],
    "digits-cnn": [],
    "mnist1d-mlp": [],
    "mnist1d-cnn": [],
    "mnist1d-speedrun": [],
    "mnist1d-gru": [],
    "mnist1d-transformer": [],
    "csv-mlp": [],
}
ELSEWHERE = {  # recipe -> the test file that trains it on generated files
    "diabetes-linear": "test_linear_regression.py",
    "fashion-convnet": "test_fashion_recipes.py",
    "fashion-resnet": "test_fashion_recipes.py",
    "fashion-speedrun": "test_fashion_recipes.py",
    "fashion-autoencoder": "test_image_recipes.py",
    "fashion-vae": "test_image_recipes.py",
    "cifar10-cnn": "test_image_recipes.py",
    "image224-cnn": "test_image_recipes.py",
    "gpt-stdlib": "test_generate.py",
}


def test_every_builtin_recipe_is_covered():
    names = set(builtin_recipes())
    assert names == set(HERE) | set(ELSEWHERE), f"add the new recipe(s) {names ^ (set(HERE) | set(ELSEWHERE))} here"
    for name, file in ELSEWHERE.items():
        text = (TESTS / file).read_text()
        assert f'"{name}"' in text and "train" in text, f"{file} does not train {name}"
        assert "check_report(" in text, f"{file} does not check {name}'s report page (browser.check_report)"


@pytest.mark.parametrize("name", sorted(HERE))
def test_recipe_runs_end_to_end(name, tmp_path):
    run = powertrain.train(name, TINY + HERE[name], out=tmp_path / name, callbacks=[])
    assert run.trainer.step == 3
    ev = json.loads((run.dir / "eval.json").read_text())
    assert 0.0 <= ev["test"]["accuracy"] <= 1.0
    bill = json.loads((run.dir / "bill.json").read_text())
    assert bill["params"] > 0 and bill["flops"]["train_total"] > 0 and bill["energy"]["total_j"] > 0
    check_report(run.dir, {"confusion"})  # its report page loads in Chromium with no error, every section there
