"""End to end through the command line: train, eval, and the refusals of bad run directories."""
import json
import subprocess
import sys

import pytest


def run(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "powertrain", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def xor_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("xor") / "run"
    p = run("train", "xor", "--out", str(out))
    assert p.returncode == 0, p.stderr
    return out, p


def test_xor_classifies_all_four_points(xor_run):
    out, p = xor_run
    ev = json.loads((out / "eval.json").read_text())
    assert ev["test"]["accuracy"] == 1.0 and ev["test"]["confusion_matrix"] == [[2, 0], [0, 2]]
    assert f"run written to {out}" in p.stdout and "test: loss" in p.stdout
    assert "step 2000/2000" in p.stdout  # plain progress lines when not on a terminal


def test_run_directory_contents(xor_run):
    out, _ = xor_run
    assert {"recipe.yaml", "env.json", "metrics.jsonl", "eval.json", "checkpoints"} <= {p.name for p in out.iterdir()}
    env = json.loads((out / "env.json").read_text())
    assert {"powertrain", "torch", "device", "torch_threads"} <= env.keys()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(200, 2001, 200))
    assert {"step", "epoch", "loss", "lr", "samples_per_s"} <= train[0].keys()


def test_eval_recomputes_saved_metrics(xor_run):
    out, _ = xor_run
    p = run("eval", str(out), "--split", "test")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["test"] == json.loads((out / "eval.json").read_text())["test"]


def test_eval_refuses_bad_run_dirs(tmp_path, xor_run):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hi")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "recipe.yaml").write_text("data: [")
    (corrupt / "env.json").write_text('{"powertrain": "0.1.0"}')
    cases = {tmp_path / "missing": "does not exist", foreign: "not a powertrain run directory", corrupt: "corrupt"}
    for path, words in cases.items():
        p = run("eval", str(path))
        assert p.returncode == 2 and words in p.stderr and p.stderr.count("\n") == 1, p.stderr
    out, _ = xor_run
    damaged = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(out), str(damaged)], check=True)
    for ck in (damaged / "checkpoints").glob("step-*/model.safetensors"):
        ck.write_bytes(b"\x00" * 20)
    p = run("eval", str(damaged))
    assert p.returncode == 2 and "is damaged" in p.stderr and "Traceback" not in p.stderr


def test_train_refuses_existing_run_dir(xor_run):
    out, _ = xor_run
    p = run("train", "xor", "--out", str(out))
    assert p.returncode == 2 and "powertrain resume" in p.stderr


def test_default_recipe_short_run(tmp_path):
    p = run("train", "train.max_steps=20", "train.log_every=10", "--out", str(tmp_path / "m"))
    assert p.returncode == 0, p.stderr
    assert "mnist1d-cnn" in (tmp_path / "m" / "recipe.yaml").read_text()
    assert json.loads((tmp_path / "m" / "eval.json").read_text())["test"]["accuracy"] > 0.2


def test_a_data_error_leaves_no_run_directory(tmp_path):
    p = run("train", "image224-cnn", "--out", str(tmp_path / "img"))  # no data.path: nothing to train on
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "data.path" in p.stderr
    assert not (tmp_path / "img").exists()


def test_a_damaged_peak_cache_is_one_note_not_a_python_warning(tmp_path):
    import os

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "peak.json").write_text('{"cut": 1')  # a cache cut short
    p = subprocess.run([sys.executable, "-m", "powertrain", "peak"], capture_output=True, text=True, timeout=180,
                       env={**os.environ, "POWERTRAIN_CACHE_DIR": str(cache)})
    assert p.returncode == 0 and "GFLOP/s fp32" in p.stdout, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"powertrain: note: peak cache '{cache / 'peak.json'}' is damaged"), lines
    assert "UserWarning" not in p.stderr and "warnings.warn" not in p.stderr
