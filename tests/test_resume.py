"""Resume equals an uninterrupted run, bit for bit on CPU (pinned: train.device=cpu): after Ctrl-C, after
SIGKILL mid-run, and after SIGKILL in the middle of writing a checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import powertrain
from powertrain import Callback
from powertrain.run.rundir import RunDir

ARGS = ["train.epochs=3", "train.checkpoint_every_steps=5", "train.log_every=4",  # digits-mlp has dropout: RNG matters
        "train.device=cpu"]  # bit for bit is the CPU's promise (CUDA kernels need not be deterministic)


def final_weights(run_dir: Path) -> dict:
    return load_file(str(RunDir(run_dir).list_checkpoints()[-1] / "model.safetensors"))


def same_run(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((a / "eval.json").read_text()) == json.loads((b / "eval.json").read_text())
    strip = lambda p: [{k: v for k, v in r.items() if k != "samples_per_s"}  # noqa: E731
                       for r in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())
                       if "window" not in r]  # measured time and energy per epoch differ run to run
    assert strip(a) == strip(b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    powertrain.train("digits-mlp", ARGS, out=out, callbacks=[])
    return out


class InterruptAt(Callback):
    """Sends this process SIGINT (Ctrl-C) while step `step` runs."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, loss):
        if trainer.step == self.step - 1:  # the signal lands before step `step`; that step still finishes
            os.kill(os.getpid(), signal.SIGINT)


def test_resume_after_ctrl_c_in_process(reference, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(powertrain.Interrupted) as e:
        powertrain.train("digits-mlp", ARGS, out=out, callbacks=[InterruptAt(13)])
    assert e.value.exit_code == 130 and e.value.step == 12
    assert f"resume with: powertrain resume {out}" in capsys.readouterr().err
    assert RunDir(out).list_checkpoints()[-1].name == "step-00000012"  # at the step boundary
    powertrain.resume(out, callbacks=[])
    same_run(reference, out)


SLOW_CLI = """
import sys, time
from powertrain.train.engine import Trainer
step = Trainer.train_step
Trainer.train_step = lambda self, batch: (time.sleep(0.01), step(self, batch))[1]  # so a signal lands mid-run
from powertrain.cli import main
sys.exit(main(sys.argv[1:]))
"""


def slow_cli(*args):
    return subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_checkpoint(out: Path, proc, timeout=60):
    t0 = time.time()
    while not RunDir(out).list_checkpoints():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_resume_after_signal(reference, tmp_path, sig):
    out = tmp_path / "run"
    proc = slow_cli("train", "digits-mlp", *ARGS, "--out", str(out))
    wait_for_checkpoint(out, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and f"resume with: powertrain resume {out}" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert RunDir(out).list_checkpoints()[-1].name < "step-00000063"  # it really stopped mid-run
    done = subprocess.run([sys.executable, "-m", "powertrain", "resume", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    same_run(reference, out)


KILL_IN_WRITE = """
import os, signal, sys
calls = {"n": 0}
real = os.fsync
def dying_fsync(fd):
    calls["n"] += 1
    if calls["n"] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    real(fd)
os.fsync = dying_fsync
from powertrain.cli import main
main(sys.argv[2:])
"""


def test_kill_during_checkpoint_write(reference, tmp_path):
    out = tmp_path / "run"
    # recipe.yaml and env.json fsync twice each (file, folder), each checkpoint 4 times (2 files, temp dir,
    # parent): die inside the 3rd checkpoint's write
    p = subprocess.run([sys.executable, "-c", KILL_IN_WRITE, "14", "train", "digits-mlp", *ARGS, "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL
    assert [c.name for c in RunDir(out).list_checkpoints()] == ["step-00000005", "step-00000010"]
    assert any(d.name.startswith(".tmp-") for d in (out / "checkpoints").iterdir())  # the half-written one
    powertrain.resume(out, callbacks=[])
    assert not any(d.name.startswith(".tmp-") for d in (out / "checkpoints").iterdir())
    same_run(reference, out)
