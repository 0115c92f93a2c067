"""Issue 21, silent wrong results: numbers a float32 model cannot hold are handled like NaN/inf cells, every JSON
file powertrain writes is strict JSON (NaN and infinities as null, the reason beside), and a schedule the run is
too short for is said at the start, with the learning rate it really reaches."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

import powertrain
from powertrain import DataBundle, TrainConfig, Trainer, cli, data
from powertrain.errors import DataError
from powertrain.infer.predict import predict, write_predictions
from powertrain.run.atomic import dumps, strict


def strict_load(text: str):
    """json.loads that refuses NaN and Infinity, as JSON parsers other than Python's do."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def table(path, cells: dict) -> None:
    """A CSV of 60 rows (a, b numeric, c categorical, target 0/1), with `cells` {(row, column): text} put in."""
    rng = random.Random(0)
    rows = [[f"{rng.random():.4f}", f"{rng.random() * 10:.3f}", rng.choice("xy"), str(i % 2)] for i in range(60)]
    for (i, j), text in cells.items():
        rows[i][j] = text
    path.write_text("a,b,c,target\n" + "\n".join(",".join(r) for r in rows) + "\n")


@pytest.mark.parametrize("cells, column", [
    ({(4, 0): "1e308"}, "a"),  # the issue's: finite in float64, inf in float32
    ({(8, 1): "-3.5e38"}, "b"),  # just beyond float32's largest
    ({(2, 3): "1e39"}, "target"),  # in the target
])
def test_a_number_beyond_float32_is_dropped_with_a_note_and_the_run_stays_finite(tmp_path, cells, column):
    table(tmp_path / "t.csv", cells)
    bundle = data.build({"name": "csv", "path": str(tmp_path / "t.csv"), "target": "target"}, seed=0)
    report = bundle.meta.extra["report"]
    assert report["beyond_float32"] == {column: 1} and report["rows_kept"] == 59
    assert "numbers beyond float32 (|x| > 3.4e38), counted as missing" in str(report)
    for split in (bundle.train, bundle.val, bundle.test):
        assert torch.isfinite(split.tensors[0]).all()
    run = powertrain.train({"data": {"name": "csv", "path": str(tmp_path / "t.csv"), "target": "target"},
                            "model": {"name": "mlp", "hidden": [4]}, "train": {"max_steps": 3}},
                           out=tmp_path / "run", callbacks=[])
    assert math.isfinite(strict_load((run.dir / "eval.json").read_text())["test"]["loss"])


def test_a_number_just_inside_float32_is_kept(tmp_path):
    table(tmp_path / "t.csv", {(4, 0): "3.3e38"})
    report = data.build({"name": "csv", "path": str(tmp_path / "t.csv"), "target": "target"}, seed=0).meta.extra["report"]
    assert report["beyond_float32"] == {} and report["rows_kept"] == 60


def test_predict_refuses_an_input_beyond_float32_in_one_line(tmp_path, capsys):
    run = powertrain.train("digits-mlp", ["train.max_steps=2"], out=tmp_path / "run", callbacks=[]).dir
    x = np.zeros((3, 64))
    x[1, 5] = 1e308
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError, match="sample 1 holds a value that is not a finite float32 number"):
        predict(run, tmp_path / "x.npy")
    assert cli.main(["predict", str(run), str(tmp_path / "x.npy")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ---------------------------------------------------------------- strict JSON
def test_strict_json_makes_non_finite_numbers_null_with_the_reason_beside():
    doc = {"loss": float("nan"), "up": float("inf"), "curve": (1.0, float("-inf")), "deep": {"x": float("nan")}}
    back = strict_load(dumps(doc))
    assert back["loss"] is None and back["loss_note"].startswith("NaN")
    assert back["up"] is None and back["up_note"].startswith("+inf")
    assert back["curve"] == [1.0, None] and back["curve_note"].startswith("-inf at [1]")
    assert back["deep"] == {"x": None, "x_note": "NaN (not a finite number: JSON holds none)"}
    assert strict({"a": 1.5, "b": [2, 3]}) == {"a": 1.5, "b": [2, 3]}  # finite values as they are


def test_a_run_with_a_non_finite_test_metric_writes_strict_json_everywhere(tmp_path):
    """A model that overflows on the test split (infinite inputs): its loss is NaN; eval.json, bill.json,
    metrics.jsonl and predictions written as JSON stay strict JSON, the reason beside the null."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    bundle = DataBundle.from_tensors((x, y), val=(x[:16], y[:16]), test=(x[:8] * float("inf"), y[:8]))
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    t = Trainer(model, bundle, TrainConfig(max_steps=4, batch_size=16, log_every=1), run_dir=tmp_path / "run",
                callbacks=[]).fit()
    assert not math.isfinite(t.results["test"]["loss"])  # what the run computed in memory
    ev = strict_load((tmp_path / "run" / "eval.json").read_text())
    assert ev["test"]["loss"] is None and "not a finite number" in ev["test"]["loss_note"]
    strict_load((tmp_path / "run" / "bill.json").read_text())
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        strict_load(line)
    result = {"run": "r", "predictions": [{"input": "0", "value": float("inf")}], "outputs": torch.zeros(1),
              "bill": {"energy_j": float("nan")}}
    doc = strict_load(write_predictions(result, tmp_path / "p.json").read_text())
    assert doc["predictions"][0]["value"] is None and doc["bill"]["energy_j_note"].startswith("NaN")


# ---------------------------------------------------------------- a schedule the run is too short for
def test_a_warmup_longer_than_the_run_is_said_at_the_start_with_the_rate_it_reaches(tmp_path, capsys):
    """The issue's case in small: warmup 100 over a 30-step cosine run. The warning's peak is the largest
    learning rate the run logged (metrics.jsonl, every step)."""
    assert cli.main(["train", "digits-mlp", "train.max_steps=30", "train.warmup_steps=100", "train.schedule=cosine",
                     "train.lr=3e-3", "train.log_every=1", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "warmup_steps" in x)
    assert line.startswith("powertrain: warning: train.warmup_steps=100 is longer than the run (30 steps)")
    logged = [json.loads(r)["lr"] for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"lr"' in r]
    said = float(line.split("peaks at ")[1].split(",")[0])
    assert said == pytest.approx(max(logged), rel=0.01) and max(logged) < 3e-3 * 0.5
    assert f"{max(logged) / 3e-3:.0%} of train.lr=0.003" in line


@pytest.mark.parametrize("overrides, words", [
    (["train.schedule=step", "train.step_size=50"], "the learning rate never decays"),
    (["train.schedule=cosine_restarts", "train.restart_steps=40"], "no restart comes"),
])
def test_other_schedule_parts_the_run_never_reaches_are_said(tmp_path, capsys, overrides, words):
    assert cli.main(["train", "xor", "train.max_steps=10", *overrides, "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert words in capsys.readouterr().err


def test_a_schedule_the_run_completes_says_nothing(tmp_path, capsys):
    assert cli.main(["train", "xor", "train.max_steps=10", "train.warmup_steps=5", "--out", str(tmp_path / "run"),
                     "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err
