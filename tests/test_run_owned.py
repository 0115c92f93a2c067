"""The run directory has one owner, and no crash, signal or bad input loses work or silently changes a
result: regression tests for what was seen on 89b9024 (issue "The run, owned")."""
import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

import powertrain
from powertrain import Callback, RunDir
from powertrain.shrink.export import export
from powertrain.errors import RecipeError, RunDirError

CPU = "train.device=cpu"  # the resumed runs below equal their references bit for bit: the CPU's promise
ARGS = ["train.epochs=2", "train.log_every=4", CPU]  # digits-mlp: 21 steps an epoch, checkpoints at 21 and 42


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    powertrain.train("digits-mlp", ARGS, out=out, callbacks=[])
    return out


def weights(path) -> dict:
    path = RunDir(path).final_weights() if RunDir(path).recipe_file.exists() else path
    return load_file(str(path / "model.safetensors" if path.is_dir() else path))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage", ["truncate", "delete_state"])
def test_damaged_newest_checkpoint_is_refused_by_eval_and_export_and_rewritten_by_resume(reference, tmp_path, damage,
                                                                                      capsys):
    run = copy_run(reference, tmp_path / "run")
    newest = RunDir(run).checkpoint(42)
    if damage == "truncate":
        f = newest / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:
        (newest / "state.pt").unlink()
    with pytest.raises(RunDirError, match="step-00000042.*--checkpoint step-00000021"):
        powertrain.evaluate(run)
    with pytest.raises(RunDirError, match="step-00000042"):
        export(run, format="safetensors")
    older = powertrain.evaluate(run, checkpoint="step-00000021")  # asked for by name: allowed
    assert older["accuracy"] != json.loads((reference / "eval.json").read_text())["test"]["accuracy"]
    powertrain.resume(run, callbacks=[])  # from step 21, then step 42 is trained again and its checkpoint rewritten
    assert "resuming from the checkpoint before it" in capsys.readouterr().err
    RunDir(run).final_weights()  # whole again
    assert same_weights(weights(run), weights(reference))
    assert json.loads((run / "eval.json").read_text()) == json.loads((reference / "eval.json").read_text())


def test_rung2_trainer_with_run_dir_writes_eval_and_bill(tmp_path, tiny_digits):
    from powertrain import TrainConfig, Trainer, models

    model = models.build({"name": "mlp", "hidden": [16]}, tiny_digits.meta)
    t = Trainer(model, tiny_digits, TrainConfig(epochs=2), run_dir=tmp_path / "r2", callbacks=[]).fit()
    ev = json.loads((tmp_path / "r2" / "eval.json").read_text())
    bill = json.loads((tmp_path / "r2" / "bill.json").read_text())
    assert ev["test"]["accuracy"] == t.evaluate("test")["accuracy"]
    assert bill["steps"] == t.step and bill["flops"]["train_total"] == t.train_flops(0, t.step) > 0
    assert t.bill()["params"] == sum(p.numel() for p in model.parameters())


class Crash(Exception):
    pass


class CrashAt(Callback):
    """A crash inside step `step` (after its update, before its boundary work): no checkpoint of it."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, loss):
        if trainer.step == self.step:
            raise Crash


def metrics_lines(path):
    out = []
    for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines()):
        if "window" in r:
            out.append({k: r[k] for k in ("step", "epoch", "window")})
        else:
            out.append({k: v for k, v in r.items() if k != "samples_per_s"})
    return out


ES = ["train.epochs=12", "train.log_every=5", "train.checkpoint_every_steps=21", "train.early_stop.metric=accuracy",
      "train.early_stop.patience=1", "train.lr=0.02", "run.seed=3", CPU]


def test_early_stopping_survives_a_crash_after_a_checkpoint_on_an_epoch_end(tmp_path):
    ref = powertrain.train("digits-mlp", ES, out=tmp_path / "ref", callbacks=[])
    assert ref.metrics["stop_reason"].startswith("early stop") and ref.trainer.step < 12 * 21
    crash_at = ref.trainer.step - 10  # past a checkpoint at an epoch end, before the stop
    with pytest.raises(Crash):
        powertrain.train("digits-mlp", ES, out=tmp_path / "run", callbacks=[CrashAt(crash_at)])
    run = powertrain.resume(tmp_path / "run", callbacks=[])
    assert run.trainer.step == ref.trainer.step
    assert run.metrics == ref.metrics
    assert metrics_lines(tmp_path / "run") == metrics_lines(tmp_path / "ref")


def test_nothing_runs_after_the_early_stop_decision_with_eval_every_steps(tmp_path):
    args = [*ES, "train.eval_every_steps=10", "train.checkpoint_every_steps=7"]
    run = powertrain.train("digits-mlp", args, out=tmp_path / "run", callbacks=[])
    assert run.metrics["stop_reason"].startswith("early stop")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["step"] for r in records if "val" in r]
    assert evals[-1] == run.trainer.step == run.metrics["step"] and run.trainer.step % 10 == 0
    assert max(r["step"] for r in records) == run.trainer.step
    assert RunDir(tmp_path / "run").list_checkpoints()[-1].name == f"step-{run.trainer.step:08d}"


def test_resume_with_a_new_lr_applies_it_and_logs_it(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run")
    r = powertrain.resume(run, ["train.epochs=3", "train.lr=0.5"], callbacks=[])
    assert r.recipe.train.lr == 0.5 and "lr: 0.5" in (run / "recipe.yaml").read_text()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    after = [x for x in records if "lr" in x and x["step"] > 42]
    assert after and all(x["lr"] == pytest.approx(0.5) for x in after)
    assert any(x.get("resume_overrides") == {"train.epochs": 3, "train.lr": 0.5} for x in records)


@pytest.mark.parametrize("override", ["model.hidden=[32]", "data.name=iris", "train.optimizer=sgd",
                                      "train.batch_size=7"])
def test_resume_refuses_what_changes_the_model_data_or_optimizer_and_changes_nothing(reference, tmp_path, override):
    run = copy_run(reference, tmp_path / "run")
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(RecipeError, match=f"resume: '{override.split('=')[0]}"):
        powertrain.resume(run, [override], callbacks=[])
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before
    powertrain.resume(run, ["train.epochs=3"], callbacks=[])  # still resumable


def test_a_second_writer_is_refused_naming_the_holder(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run")
    holder = RunDir(run).lock()  # another process would hold it the same way (flock)
    try:
        with pytest.raises(RunDirError, match=f"in use by process {os.getpid()}"):
            powertrain.resume(run, ["train.epochs=3"], callbacks=[])
    finally:
        holder.unlock()


def test_two_runs_started_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda fmt, *a: "20261127-120000")
    a = powertrain.train("xor", ["train.epochs=1"], callbacks=[])
    b = powertrain.train("xor", ["train.epochs=1"], callbacks=[])
    assert a.dir != b.dir and a.dir.name == "xor-20261127-120000" and b.dir.name == "xor-20261127-120000-2"


def test_out_naming_a_file_is_one_line(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(RunDirError, match="is a file; pass a folder"):
        powertrain.train("xor", ["train.epochs=1"], out=f, callbacks=[])


def test_disk_full_while_creating_leaves_nothing_behind(tmp_path, monkeypatch):
    import errno

    from powertrain.run import atomic

    real = atomic.fsync_path

    def full(path):
        if path.name.startswith(".env.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path)

    monkeypatch.setattr(atomic, "fsync_path", full)
    with pytest.raises(OSError):
        powertrain.train("xor", ["train.epochs=1"], out=tmp_path / "run", callbacks=[])
    assert not (tmp_path / "run").exists()


def test_early_stop_metric_is_checked_before_training_and_leaves_no_run(tmp_path):
    with pytest.raises(RecipeError, match="train.early_stop.metric: 'acc'.*accuracy"):
        powertrain.train("digits-mlp", ["train.early_stop.metric=acc"], out=tmp_path / "run", callbacks=[])
    assert not (tmp_path / "run").exists()


def test_sigterm_checkpoints_at_a_step_boundary(reference, tmp_path):
    class TermAt(Callback):
        def on_step_end(self, trainer, loss):
            if trainer.step == 30:
                os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(powertrain.Interrupted) as e:
        powertrain.train("digits-mlp", ARGS, out=tmp_path / "run", callbacks=[TermAt()])
    assert e.value.exit_code == 143 and RunDir(tmp_path / "run").list_checkpoints()[-1].name == "step-00000030"
    powertrain.resume(tmp_path / "run", callbacks=[])
    assert same_weights(weights(tmp_path / "run"), weights(reference))
    assert metrics_lines(tmp_path / "run") == metrics_lines(reference)


def test_fsdp_on_a_model_without_blocks_is_refused_before_launch(monkeypatch, capsys):
    from powertrain.train import distributed
    from powertrain.cli import main

    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("launched"))
    assert main(["train", "digits-mlp", "--nproc", "2", "train.strategy=fsdp"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.strategy: fsdp" in err and "ddp" in err


def test_resume_with_nproc_validates_its_overrides_before_the_launch(reference, tmp_path, monkeypatch, capsys):
    from powertrain.train import distributed
    from powertrain.cli import main

    run = copy_run(reference, tmp_path / "run")
    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("launched"))
    assert main(["resume", str(run), "model.hidden=[8]", "--nproc", "2"]) == 2
    assert "resume: 'model.hidden'" in capsys.readouterr().err
    assert main(["resume", str(run), "--nproc", "2", "train.strategy=fsdp"]) == 2
    assert "train.strategy: fsdp" in capsys.readouterr().err
