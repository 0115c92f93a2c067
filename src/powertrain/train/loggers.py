"""TensorBoard and MLflow logging as Callbacks, written off the training step's hot path.

`run.tensorboard: true` and `run.mlflow: true` (or a tracking URI) in a recipe add them (api.build_trainer);
with your own Trainer pass them as callbacks:

>>> from powertrain.train.loggers import TensorBoardLogger
>>> trainer = Trainer(model, data, cfg, run_dir="runs/mine", callbacks=[TensorBoardLogger()])  # doctest: +SKIP

What is logged, at the cadence metrics.jsonl already has (never per step):

    train/loss, train/lr, train/samples_per_s     every `train.log_every` steps (on_log)
    val/<metric>                                  every evaluation during fit (on_eval_end)
    cost/energy_j, cost/flops, cost/time_s        cumulative training (the Meter's epoch windows), at each evaluation
    cost/mfu                                      MFU of the epochs since the previous evaluation (a cached or table peak)
    test/<metric>, final_val/<metric>             the final evaluation (eval.json), at the last step
    bill/...                                      the bill's figures, once the run finished (`finish`)

A hook only puts a small tuple into a queue (about a microsecond); one background thread per logger wakes
every second (MLflow: every 5 s, a database commit each time) and writes what was queued.
`on_fit_end` waits for the queue to empty, so a crash or Ctrl-C loses nothing logged before it. The bill
exists only after `Trainer.finish`, which runs after `on_fit_end`: `finish(trainer)` (called by
api's lifecycle; at exit for a Trainer used directly) logs it and closes the logger.
"""
from __future__ import annotations

import atexit
import math
import queue
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Optional

from .callbacks import Callback
from ..errors import RecipeError, need_extra

_OPEN: "weakref.WeakSet[RunLogger]" = weakref.WeakSet()  # closed at interpreter exit if nobody did


def _numbers(d: dict, prefix: str) -> dict:
    """{prefix/key: float} for the finite numbers of `d` (a confusion matrix and other lists are left out)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[f"{prefix}/{k}"] = float(v)
    return out


def bill_figures(bill: dict) -> dict:
    """The bill's headline figures as flat {bill/name: float} (None and missing figures left out)."""
    fig = {
        "params": bill.get("params"), "flops_train": (bill.get("flops") or {}).get("train_total"),
        "flops_per_sample_forward": (bill.get("flops") or {}).get("per_sample_forward"),
        "time_s": (bill.get("time_s") or {}).get("total"), "mfu": (bill.get("mfu") or {}).get("value"),
        "energy_j": (bill.get("energy") or {}).get("total_j"), "co2e_g": bill.get("co2e_g"),
        "peak_bytes": (bill.get("peak_memory") or {}).get("peak_bytes"),
        "samples_per_s": (bill.get("throughput") or {}).get("samples_per_s"),
        "j_per_train_sample": bill.get("j_per_train_sample"), "j_per_inference_sample": bill.get("j_per_inference_sample"),
        "cost": bill.get("cost"),
    }
    for name, c in ((bill.get("energy") or {}).get("components") or {}).items():
        fig[f"energy_j_{name}"] = c.get("energy_j")
    return _numbers({k: v for k, v in fig.items() if v is not None}, "bill")


class RunLogger(Callback):
    """The common part: a queue filled by the hooks, emptied by one background thread into `_write`."""

    min_interval_s = 1.0  # the writer thread writes what was queued this often (and when fit ends)

    def __init__(self):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()  # set by wait() and close(): write now
        self._thread: Optional[threading.Thread] = None
        self._in_fit = False
        self._closed = False
        self._failed: Optional[str] = None
        self._last_cost: Optional[tuple] = None  # (time_s, flops) of the epoch windows at the previous evaluation
        self._peak = None
        self._trainer_ref = None

    # -- what subclasses write ---------------------------------------------------------------------
    def _open(self, trainer) -> None: ...
    def _write(self, step: int, values: dict) -> None: ...
    def _flush(self) -> None: ...
    def _finish(self, trainer, bill: Optional[dict]) -> None: ...
    def _close(self, status: str) -> None: ...

    # -- the hooks: cheap on the training thread ----------------------------------------------------------
    def on_fit_start(self, trainer) -> None:
        self._trainer_ref = weakref.ref(trainer)
        if self._thread is None:
            self._open(trainer)  # raises here, before any step, if the store cannot be opened
            self._thread = threading.Thread(target=self._work, name=type(self).__name__, daemon=True)
            self._thread.start()
            _OPEN.add(self)
        from ..measure.bill import PRECISION_DTYPE
        from ..measure import peak_for

        self._peak = peak_for(trainer.device, PRECISION_DTYPE.get(trainer.precision, "fp32"), measure=False)
        self._in_fit = True
        self._last_cost = self._cost(trainer)

    def on_log(self, trainer, record: dict) -> None:
        self._q.put((record["step"], {f"train/{k}": v for k, v in record.items() if k not in ("step", "epoch")}))

    def on_eval_end(self, trainer, split: str, metrics: dict) -> None:
        if self._in_fit:
            values = _numbers(metrics, split)
            values.update(self._cost_values(trainer))
        else:  # the final evaluation (eval.json): test/..., final_val/...
            values = _numbers(metrics, "test" if split == "test" else f"final_{split}")
        self._q.put((trainer.step, values))

    def on_fit_end(self, trainer) -> None:
        self._in_fit = False
        self._q.put((trainer.step, self._cost_values(trainer)))
        self.wait()
        self._flush()
        reason = trainer.stop_reason
        if reason is None or reason == "interrupted":  # an exception or a signal ended fit: no finish follows
            self.close("FAILED" if reason is None else "KILLED")
        elif trainer.run is None:  # no run directory: no finish, no bill
            self.close("FINISHED")

    def finish(self, trainer) -> None:
        """After `Trainer.finish`: log the bill (trainer.final_bill), upload files, close."""
        if self._closed:
            return
        self.wait()
        try:
            self._finish(trainer, trainer.final_bill)
        except Exception as e:  # never fail a finished run over its logging
            self._warn(e)
        self.close("FINISHED")

    # -- the worker ---------------------------------------------------------------------------------
    def _work(self) -> None:
        """Every `min_interval_s` (or at once when someone waits: `wait`, `close`), take everything the hooks
        queued and write it together. The hooks never wake this thread: a record costs the training thread a
        queue put, not a thread switch."""
        while True:
            self._wake.wait(self.min_interval_s)
            self._wake.clear()
            batch = []
            while True:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            records = [b for b in batch if isinstance(b, tuple) and b[1]]
            if records and not self._failed:
                try:
                    self._write_many(records)
                except Exception as e:
                    self._warn(e)
            for b in batch:
                if isinstance(b, threading.Event):
                    b.set()
            if any(b is None for b in batch):
                return

    def _write_many(self, records: list) -> None:
        for step, values in records:
            self._write(step, values)

    def wait(self) -> None:
        """Block until everything queued so far is written."""
        if self._thread is None or not self._thread.is_alive():
            return
        done = threading.Event()
        self._q.put(done)
        self._wake.set()
        done.wait()

    def close(self, status: str = "FINISHED") -> None:
        if self._closed:
            return
        self._closed = True
        self.wait()
        if self._thread is not None:
            self._q.put(None)
            self._wake.set()
            self._thread.join()
        try:
            self._close(status)
        except Exception as e:
            self._warn(e)
        _OPEN.discard(self)

    def _warn(self, e: Exception) -> None:
        if not self._failed:
            self._failed = f"{type(e).__name__}: {e}"
            print(f"powertrain: warning: {type(self).__name__} stopped logging ({self._failed}); training goes on",
                  file=sys.stderr, flush=True)

    # -- cost figures from the Meter ----------------------------------------------------------------------
    @staticmethod
    def _cost(trainer) -> Optional[tuple]:
        t = trainer.meter.totals().get("epoch") if trainer.meter else None
        return (t.time_s, t.flops or 0, t.energy_j) if t is not None else None

    def _cost_values(self, trainer) -> dict:
        now = self._cost(trainer)
        if now is None or now == self._last_cost:  # no epoch window closed since the last figures
            return {}
        time_s, flops, energy_j = now
        out = {"cost/time_s": time_s, "cost/flops": float(flops), "cost/energy_j": energy_j}
        last = self._last_cost or (0.0, 0, 0.0)
        if self._peak is not None and now[0] > last[0]:
            out["cost/mfu"] = (now[1] - last[1]) / (now[0] - last[0]) / self._peak.flops_per_s
        self._last_cost = now
        return out


class TensorBoardLogger(RunLogger):
    """TensorBoard event files in `log_dir` (default: the run directory's tensorboard/ folder).
    `tensorboard --logdir runs` then shows every run. A resumed run purges the events after its
    checkpoint's step, so its curves have no doubled stretch."""

    def __init__(self, log_dir: Optional[str | Path] = None):
        need_extra("tensorboard", "tensorboard", "run.tensorboard")
        super().__init__()
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.writer = None

    def _open(self, trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self.log_dir is None:
            if trainer.run is None:
                raise RecipeError("TensorBoardLogger: the Trainer has no run_dir; pass TensorBoardLogger(log_dir=...)")
            self.log_dir = trainer.run.tensorboard_dir
        self.writer = SummaryWriter(str(self.log_dir), purge_step=trainer.step or None, flush_secs=30)

    def _write(self, step: int, values: dict) -> None:
        """One event per record holding all its scalars (add_scalar would make an event per scalar)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
        self.writer._get_file_writer().add_summary(summary, global_step=step)

    def _flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def _finish(self, trainer, bill: Optional[dict]) -> None:
        if bill:
            self._write(trainer.step, bill_figures(bill))

    def _close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class MLflowLogger(RunLogger):
    """An MLflow run per powertrain run: the resolved recipe as params, metrics by step, the bill's figures,
    and bill.json, eval.json, recipe.yaml, the final weights and the run's pictures as artifacts.

    `tracking_uri`: None for MLflow's own default (MLFLOW_TRACKING_URI, else ./mlflow.db, or ./mlruns where
    one exists), or any URI MLflow takes. The experiment is the recipe's name. The MLflow run's id is kept in
    the run directory's mlflow.json, so a resumed run logs into the same MLflow run."""

    def __init__(self, tracking_uri: Optional[str] = None, experiment: Optional[str] = None):
        need_extra("mlflow", "mlflow", "run.mlflow")
        super().__init__()
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.client = self.run_id = None

    def _open(self, trainer) -> None:
        import logging

        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # their INFO lines (database tables created, migrated) are not ours to print
            if logging.getLogger(name).getEffectiveLevel() < logging.WARNING:
                logging.getLogger(name).setLevel(logging.WARNING)
        self.client = MlflowClient(self.tracking_uri)
        uri = getattr(self.client, "tracking_uri", None) or self.tracking_uri
        run = trainer.run
        kept = run.read("mlflow", required=False) if run is not None else None
        if kept and kept.get("tracking_uri") == uri:  # a resume: the same MLflow run goes on
            self.run_id = kept["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        recipe = run.recipe() if run is not None and run.recipe_file.exists() else None
        name = self.experiment or (recipe.name if recipe is not None else "powertrain")
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
        tags = {"powertrain.run_dir": str(run.path.resolve())} if run is not None else {}
        if recipe is not None:
            tags["powertrain.kind"] = run.kind
        r = self.client.create_run(exp_id, run_name=run.path.name if run is not None else None, tags=tags)
        self.run_id = r.info.run_id
        if recipe is not None:
            from mlflow.entities import Param

            params = [Param(k, str(v)[:500]) for k, v in sorted(_flatten(recipe.to_dict()).items())]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        if run is not None:
            run.write("mlflow", {"tracking_uri": uri, "experiment_id": exp_id, "run_id": self.run_id})

    min_interval_s = 5.0  # a log_batch is a database commit (~20 ms of CPU here): one per 5 s at most, however many records

    def _write(self, step: int, values: dict) -> None:
        self._write_many([(step, values)])

    def _write_many(self, records: list) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for step, values in records for k, v in values.items()]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def _finish(self, trainer, bill: Optional[dict]) -> None:
        if bill:
            self._write(trainer.step, bill_figures(bill))
        run = trainer.run
        if run is None:
            return
        for f in (run.bill_file, run.eval_file, run.recipe_file, run.env_file):
            if f.exists():
                self.client.log_artifact(self.run_id, str(f))
        try:
            weights = run.final_weights()
        except Exception:
            weights = None
        if weights is not None:
            files = [weights] if weights.is_file() else [p for p in weights.iterdir() if p.suffix == ".safetensors"]
            for f in files:
                self.client.log_artifact(self.run_id, str(f), artifact_path="weights")
        for p in run.pictures():
            self.client.log_artifact(self.run_id, str(p), artifact_path="pictures")

    def _close(self, status: str) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)


def for_recipe(run_config) -> list[RunLogger]:
    """The loggers a recipe's `run:` section asks for (a MissingExtra naming the pip extra if one is absent)."""
    out: list[RunLogger] = []
    if run_config.tensorboard:
        out.append(TensorBoardLogger())
    if run_config.mlflow:
        out.append(MLflowLogger(None if run_config.mlflow is True else str(run_config.mlflow)))
    return out


def finish(trainer) -> None:
    """Log the bill and close every RunLogger of `trainer` (after `Trainer.finish`)."""
    for cb in trainer.callbacks:
        if isinstance(cb, RunLogger):
            cb.finish(trainer)


@atexit.register
def _close_open_loggers() -> None:
    """A Trainer used directly (rung 2): no lifecycle calls `finish`; do it at exit, bill included."""
    for logger in list(_OPEN):
        trainer = logger._trainer_ref() if logger._trainer_ref is not None else None
        if trainer is not None and trainer.final_bill is not None:
            logger.finish(trainer)
        else:
            logger.close("FINISHED")
