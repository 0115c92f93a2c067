"""TensorBoard and MLflow logging (loggers.py), read back with each tool's own reader: TensorBoard's
EventAccumulator and MLflow's MlflowClient (a local sqlite store under tmp_path)."""
import builtins
import json

import pytest

import powertrain
from powertrain.errors import MissingExtra
from powertrain.run.rundir import RunDir

RUN = ["train.epochs=2", "train.log_every=5"]  # digits-mlp: 21 steps an epoch, an evaluation at each epoch end


def scalars(path, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(path), size_guidance={"scalars": 0})
    ea.Reload()
    return [(e.step, e.value) for e in ea.Scalars(tag)], ea.Tags()["scalars"]


def test_tensorboard_events_hold_the_metrics_jsonl_figures(tmp_path):
    pytest.importorskip("tensorboard")
    run = powertrain.train("digits-mlp", [*RUN, "run.tensorboard=true"], out=tmp_path / "r", callbacks=[])
    tb = RunDir(run.dir).tensorboard_dir
    records = RunDir(run.dir).metrics()
    loss, tags = scalars(tb, "train/loss")
    assert loss == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in records if "loss" in r and "val" not in r]
    val = [(r["step"], r["val"]["accuracy"]) for r in records if "val" in r]
    assert scalars(tb, "val/accuracy")[0] == [(s, pytest.approx(v, rel=1e-6)) for s, v in val]
    energy = [r for r in records if r.get("window") == "epoch"]
    cum = [sum(w["energy_j"] for w in energy[:i + 1]) for i in range(len(energy))]
    assert [v for _, v in scalars(tb, "cost/energy_j")[0]] == pytest.approx(cum, rel=1e-5)
    assert [v for _, v in scalars(tb, "cost/flops")[0]] == pytest.approx([sum(w["flops"] for w in energy[:i + 1])
                                                                          for i in range(len(energy))], rel=1e-6)
    assert {"train/lr", "train/samples_per_s", "cost/mfu", "test/accuracy", "bill/energy_j", "bill/mfu"} <= set(tags)
    assert scalars(tb, "bill/energy_j")[0][-1][1] == pytest.approx(run.bill["energy"]["total_j"], rel=1e-6)


def test_mlflow_run_holds_params_metrics_bill_and_artifacts_and_resume_continues_it(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts beside the store (./mlruns)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = powertrain.train("digits-mlp", ["train.epochs=1", "train.log_every=5", f"run.mlflow={uri}"],
                           out=tmp_path / "r", callbacks=[])
    kept = RunDir(run.dir).read("mlflow")
    assert kept["tracking_uri"] == uri
    client = MlflowClient(uri)
    r = client.get_run(kept["run_id"])
    assert r.info.status == "FINISHED" and r.info.run_name == "r"
    assert client.get_experiment(r.info.experiment_id).name == "digits-mlp"
    assert r.data.params["train.epochs"] == "1" and r.data.params["model.hidden"] == "[256, 128]"
    assert r.data.tags["powertrain.run_dir"] == str(run.dir.resolve())
    history = client.get_metric_history(r.info.run_id, "train/loss")
    assert [m.step for m in history] == [5, 10, 15, 20, 21]
    assert r.data.metrics["test/accuracy"] == pytest.approx(run.metrics["test"]["accuracy"])
    assert r.data.metrics["bill/energy_j"] == pytest.approx(run.bill["energy"]["total_j"])
    assert r.data.metrics["bill/flops_train"] == pytest.approx(run.bill["flops"]["train_total"])
    files = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"bill.json", "eval.json", "recipe.yaml", "weights"} <= files
    assert [a.path for a in client.list_artifacts(r.info.run_id, "weights")] == ["weights/model.safetensors"]
    local = client.download_artifacts(r.info.run_id, "bill.json", str(tmp_path / "dl"))
    assert json.loads(open(local).read()) == run.bill

    resumed = powertrain.resume(run.dir, ["train.epochs=2"], callbacks=[])  # the same MLflow run goes on
    assert RunDir(run.dir).read("mlflow")["run_id"] == kept["run_id"]
    assert client.get_run(kept["run_id"]).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(kept["run_id"], "val/accuracy")]
    assert steps == [21, 42] and resumed.trainer.step == 42


def test_a_missing_package_is_one_line_naming_the_extra_before_anything_trains(tmp_path, monkeypatch):
    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError("No module named 'tensorboard'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    monkeypatch.delitem(__import__("sys").modules, "tensorboard", raising=False)
    with pytest.raises(MissingExtra) as e:
        powertrain.train("xor", ["run.tensorboard=true"], out=tmp_path / "r", callbacks=[])
    assert str(e.value) == ("run.tensorboard needs the 'tensorboard' package, which is not installed; "
                            "pip install 'powertrain[tensorboard]'")
    assert not (tmp_path / "r").exists()  # nothing trained, nothing left
    from powertrain.cli import main

    assert main(["train", "xor", "run.tensorboard=true", "--out", str(tmp_path / "c")]) == 2


def test_hooks_only_queue_and_a_failing_store_never_stops_training(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from powertrain.train.loggers import TensorBoardLogger

    class Broken(TensorBoardLogger):
        def _write(self, step, values):
            raise OSError("disk full")

    logger = Broken()
    run = powertrain.train("xor", ["train.max_steps=20", "train.log_every=5"], out=tmp_path / "r", callbacks=[logger])
    assert run.metrics["step"] == 20  # the run finished
    assert "Broken stopped logging (OSError: disk full); training goes on" in capsys.readouterr().err
    assert logger._q.empty()
    assert "on_step_end" not in TensorBoardLogger.__dict__  # nothing per step: only at the log cadence
