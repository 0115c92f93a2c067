"""Issue 21, readers while a run is training, and honest messages: a run whose lock a process holds is
'training' (even with an eval.json from before: a resume extends it); a command that needs its final weights
says so, naming the process and the checkpoint that is safe to use; every command that loads weights takes
--checkpoint, and a derived run records which weights it started from; the loser of two writers is told who
holds the run, not to resume it."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import powertrain
from powertrain import cli, data
from powertrain.cli import parser
from powertrain.errors import RunDirError
from powertrain.run import checkpoint
from powertrain.run.rundir import RunDir

HOLD = textwrap.dedent("""
    import sys, time
    from powertrain.run.rundir import RunDir
    RunDir(sys.argv[1]).lock()  # what a train or resume of the run holds while it trains
    print("locked", flush=True)
    time.sleep(120)
""")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return powertrain.train("digits-mlp", ["train.max_steps=12", "train.checkpoint_every_steps=4"],
                            out=tmp_path_factory.mktemp("readers") / "run", callbacks=[]).dir


@pytest.fixture(scope="module")
def training(finished):
    """The finished run while another process holds its lock (a resume extending it)."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(finished)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    yield finished, p.pid
    p.kill()
    p.wait()


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("x") / "x.npy"
    np.save(path, data.build({"name": "digits", "normalize": False}).test.tensors[0][:4].numpy())
    return path


def one_line(capsys, argv, code=2) -> str:
    assert cli.main(argv) == code, capsys.readouterr()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_run_being_extended_is_training_not_complete(training, capsys):
    run, pid = training
    assert (run / "eval.json").is_file()  # from before: the resume has not finished
    st = RunDir(run).status()
    assert st["state"] == "training" and st["pid"] == pid
    assert cli.main(["runs", str(run.parent), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["state"]) for r in rows] == ["training"]


@pytest.mark.parametrize("argv", [["eval"], ["export", "--format", "safetensors"], ["predict", "X"],
                                  ["prune", "--sparsity", "0.5", "--epochs", "0"], ["quantize", "--repeats", "2"],
                                  ["explain", "--n", "4", "--no-checks", "--method", "saliency"]])
def test_a_command_that_needs_the_final_weights_names_the_training_process_and_the_safe_checkpoint(
        training, sample, tmp_path, capsys, argv):
    run, pid = training
    argv = [argv[0], str(run), *[str(sample) if a == "X" else a for a in argv[1:]]]
    if argv[0] in ("prune", "quantize"):
        argv += ["--out", str(tmp_path / "child")]
    err = one_line(capsys, argv)
    assert f"is training (process {pid})" in err and "--checkpoint step-00000012" in err, err
    assert "damaged" not in err and "model.safetensors/model.safetensors" not in err
    assert not (tmp_path / "child").exists()


def test_with_checkpoint_they_work_and_a_derived_run_records_the_step(training, sample, tmp_path, capsys):
    run, _ = training
    ck = "step-00000008"
    assert cli.main(["eval", str(run), "--checkpoint", ck]) == 0
    capsys.readouterr()
    assert cli.main(["predict", str(run), str(sample), "--checkpoint", ck, "--json"]) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)  # stdout: one JSON document, nothing else
    assert doc["checkpoint"] == ck and len(doc["predictions"]) == 4 and "inference:" in out.err
    recipe = RunDir(run).recipe()
    model = powertrain.models.build(recipe.model.model_dump(), data.build(recipe.data.model_dump()).meta)
    checkpoint.load_weights(model, run / "checkpoints" / ck, "cpu")  # the same weights, loaded by hand
    with torch.no_grad():
        x = torch.from_numpy(np.load(sample)).float()
        st = data.build({"name": "digits"}).meta.extra["standardize"]
        want = model.eval()((x.reshape(4, -1) - torch.tensor(st["mean"])) / torch.tensor(st["std"])).argmax(1)
    assert [int(p["class"]) for p in doc["predictions"]] == want.tolist()
    assert cli.main(["prune", str(run), "--sparsity", "0.5", "--epochs", "0", "--checkpoint", ck,
                     "--out", str(tmp_path / "pruned")]) == 0
    derived = json.loads((tmp_path / "pruned" / "derived.json").read_text())
    assert derived["settings"]["parent_weights"] == {"weights": ck, "step": 8}


def test_every_command_that_loads_weights_takes_checkpoint():
    p = parser()
    for argv in (["eval", "R"], ["export", "R"], ["predict", "R", "x.npy"], ["generate", "R"], ["prune", "R"],
                 ["quantize", "R"], ["explain", "R"], ["audit", "R"]):
        assert p.parse_args([*argv, "--checkpoint", "step-00000004"]).checkpoint == "step-00000004", argv


def test_the_loser_of_two_writers_is_told_the_holders_process_not_to_resume(training, capsys):
    run, pid = training
    err = one_line(capsys, ["train", "digits-mlp", "--out", str(run)])
    assert f"in use by process {pid}" in err and "powertrain resume" not in err


def test_a_checkpoint_file_that_vanished_is_missing_not_damaged_and_its_path_is_not_doubled(finished, tmp_path):
    model = torch.nn.Linear(2, 2)
    for path in (tmp_path / "best.safetensors", tmp_path / "step-00000009"):
        with pytest.raises(RunDirError) as e:
            checkpoint.load_weights(model, path, "cpu")
        assert "is missing" in str(e.value) and "model.safetensors/model.safetensors" not in str(e.value)
        assert "best.safetensors/model.safetensors" not in str(e.value)
