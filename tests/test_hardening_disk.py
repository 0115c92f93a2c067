"""Issue 21: a disk that fills while a run writes is one line (what filled, where, what is kept, how to resume),
the checkpoints before it stay whole, and a resume after freeing space equals an uninterrupted run.

The disk is a real small tmpfs (mounted here when the process may; skipped otherwise) filled by a ballast
file at a chosen moment; a file-size limit (ulimit -f, in a child process) gives the same failures anywhere.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

import powertrain
from powertrain import Callback, cli
from powertrain.errors import WriteError
from powertrain.run import checkpoint

RECIPE = "digits-mlp"
ARGS = ["train.max_steps=18", "train.checkpoint_every_steps=6", "train.eval_every_steps=6", "train.log_every=3",
        "train.device=cpu"]  # a resumed run equals an uninterrupted one bit for bit: the CPU's promise
# checkpoints at 6, 12, 18 (model.safetensors ~200 kB, state.pt ~420 kB)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("disk-ref") / "run"
    powertrain.train(RECIPE, ARGS, out=out, callbacks=[])
    return out


@pytest.fixture
def disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()[:80]}); test_a_file_size_limit_... covers it")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder, leave: int) -> None:
    """Write a ballast file in `folder` until the disk is full, then give back `leave` bytes."""
    ballast = folder / "ballast"
    with open(ballast, "ab", buffering=0) as f:
        block = b"\0" * 4096
        try:
            while True:
                f.write(block)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    os.truncate(ballast, max(0, os.path.getsize(ballast) - leave))


class FillAt(Callback):
    def __init__(self, folder, step: int, leave: int):
        self.folder, self.step, self.leave = folder, step, leave

    def on_checkpoint(self, trainer, path) -> None:
        if trainer.step == self.step:
            fill(self.folder, self.leave)


def same_run(ref, run) -> None:
    for name in ("step-00000018",):
        a, b = load_file(str(ref / "checkpoints" / name / "model.safetensors")), \
            load_file(str(run / "checkpoints" / name / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((ref / "eval.json").read_text()) == json.loads((run / "eval.json").read_text())


@pytest.mark.parametrize("leave, library", [(64 << 10, "safetensors"), (320 << 10, "torch.save")])
def test_disk_full_while_checkpointing_is_one_line_then_resume_equals_uninterrupted(reference, disk, leave, library):
    """leave 64 kB: model.safetensors fails; 320 kB: it fits and torch.save of state.pt fails ("unexpected pos")."""
    run = disk / "run"
    with pytest.raises(WriteError) as e:
        powertrain.train(RECIPE, ARGS, out=run, callbacks=[FillAt(disk, 6, leave)])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"disk full while writing checkpoint step-00000012 in '{run / 'checkpoints'}'")
    assert "kept whole: step-00000006" in msg and f"`powertrain resume {run}` continues from step-00000006" in msg
    checkpoint.validate(run / "checkpoints" / "step-00000006")  # the older checkpoint is whole
    assert not (run / "checkpoints" / "step-00000012").exists()
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the half-written folder is gone
    (disk / "ballast").unlink()
    powertrain.resume(run, callbacks=[])
    same_run(reference, run)


def test_disk_full_at_the_first_checkpoint_through_the_cli(disk, capsys):
    run = disk / "run"
    fill(disk, 96 << 10)
    assert cli.main(["train", RECIPE, *ARGS, "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "disk full while writing" in err and "no checkpoint was kept yet" in err, err


def test_disk_full_while_writing_eval_json_at_the_end_then_resume_finishes(reference, disk):
    """Another member: the last checkpoint is written, then eval.json finds no room."""
    run = disk / "run"
    with pytest.raises(WriteError) as e:
        powertrain.train(RECIPE, ARGS, out=run, callbacks=[FillAt(disk, 18, 0)])
    msg = str(e.value)
    assert msg.startswith("disk full while writing") and "continues from step-00000018" in msg, msg
    (disk / "ballast").unlink()
    powertrain.resume(run, callbacks=[])
    same_run(reference, run)


def test_disk_full_while_appending_metrics_names_the_file(disk):
    """Another member: metrics.jsonl's buffered lines meet a full disk between checkpoints (a bare OSError
    without a file name before)."""
    run = disk / "run"

    class FillMidway(Callback):
        def on_step_end(self, trainer, loss) -> None:
            if trainer.step == 1:  # then 45 lines of ~100 bytes and an evaluation's outgrow the file's 4 kB page
                fill(disk, 0)

    with pytest.raises(WriteError) as e:
        powertrain.train(RECIPE, ["train.max_steps=90", "train.eval_every_steps=45", "train.log_every=1"], out=run,
                         callbacks=[FillMidway()])
    msg = str(e.value)
    assert msg.startswith(f"disk full while writing metrics.jsonl in '{run}' (No space left on device)"), msg
    assert "no checkpoint was kept yet" in msg and f"`powertrain resume {run}`" in msg


CHILD = textwrap.dedent("""
    import resource, signal, sys
    import powertrain
    from powertrain import Callback, cli

    class Limit(Callback):
        def __init__(self, limit):
            self.limit = limit

        def on_checkpoint(self, trainer, path):
            if trainer.step == 6:  # the next checkpoint's files are larger than this
                resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, resource.RLIM_INFINITY))

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    real, limits = powertrain.Trainer.fit, {}
    def fit(self, *a, **k):
        self.callbacks = [*self.callbacks, Limit(limits["now"])]
        return real(self, *a, **k)
    powertrain.Trainer.fit = fit
    for i, limit in enumerate(sys.argv[2].split(",")):  # one run per limit, the limit lifted in between
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        limits["now"] = int(limit)
        code = cli.main(["train", "digits-mlp", *sys.argv[3:], "--out", f"{sys.argv[1]}-{i}", "--quiet"])
        print(f"exit {code}", file=sys.stderr, flush=True)
""")


def test_a_file_size_limit_while_checkpointing_is_one_line(tmp_path):
    """Works without mounting: at 100 kB safetensors fails with EFBIG; at 300 kB model.safetensors fits and
    torch.save of state.pt comes up short ("unexpected pos")."""
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", CHILD, str(run), f"{100 << 10},{300 << 10}", *ARGS],
                       capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr[-1500:]
    lines = r.stderr.splitlines()
    assert lines[1::2] == ["exit 2", "exit 2"], r.stderr[-1500:]  # each run: one line, then its exit status
    for i, (line, words) in enumerate(zip(lines[0::2], ("file size limit (ulimit -f) reached", "write cut short"))):
        assert line.startswith("powertrain: error: ") and words in line and "kept whole: step-00000006" in line, line
        checkpoint.validate(tmp_path / f"run-{i}" / "checkpoints" / "step-00000006")
