"""Callback hooks, and the progress display built on them.

Subclass `Callback` and override what you need; every hook gets the trainer first:

>>> class PrintEval(Callback):
...     def on_eval_end(self, trainer, split, metrics):
...         print(split, metrics["loss"])
"""
from __future__ import annotations

import sys
import time


class Callback:
    def on_fit_start(self, trainer) -> None: ...
    def on_step_end(self, trainer, loss) -> None: ...  # loss: a 0-d tensor on the device (float(loss) syncs)
    def on_log(self, trainer, record: dict) -> None: ...
    def on_eval_end(self, trainer, split: str, metrics: dict) -> None: ...
    def on_checkpoint(self, trainer, path) -> None: ...
    def on_fit_end(self, trainer) -> None: ...


def _eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Progress(Callback):
    """A rich progress bar on a terminal; plain log lines (one per log step) elsewhere."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.bar, self.start_step = None, None

    def on_fit_start(self, trainer) -> None:
        self.start_step, self.t0 = trainer.step, time.perf_counter()
        t = getattr(trainer, "threads", None)
        if t and trainer.device.type == "cpu":  # how many CPU threads, and why (measure/hardware.use_threads)
            print(f"threads: {t['threads']}, wait policy {t['wait_policy']} ({t['reason']})", file=self.stream, flush=True)
        if self.stream.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self.bar = Bar(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("epoch {task.fields[epoch]}  loss {task.fields[loss]}  {task.fields[sps]} samples/s"
                                      "{task.fields[note]}"),
                           TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task("train", total=trainer.total_steps, completed=trainer.step,
                                          epoch=trainer.step // trainer.steps_per_epoch + 1, loss="-", sps="-", note="")
            self.bar.start()

    def on_log(self, trainer, record: dict) -> None:
        note = getattr(trainer, "progress_note", "")  # a trainer's own figure, e.g. a private run's "ε 2.1"
        note = f"  {note}" if note else ""
        if self.bar is not None:
            self.bar.update(self.task, completed=record["step"], epoch=record["epoch"],
                            loss=f"{record['loss']:.4f}", sps=f"{record['samples_per_s']:,.0f}", note=note)
            return
        done = record["step"] - self.start_step
        left = (trainer.total_steps - record["step"]) * (time.perf_counter() - self.t0) / max(done, 1)
        print(f"step {record['step']}/{trainer.total_steps}  epoch {record['epoch']}  loss {record['loss']:.4f}  "
              f"lr {record['lr']:.3g}  {record['samples_per_s']:,.0f} samples/s{note}  eta {_eta(left)}",
              file=self.stream, flush=True)

    def on_eval_end(self, trainer, split: str, metrics: dict) -> None:
        if self.start_step is None:  # evaluations outside fit() are the caller's to print
            return
        text = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        line = f"step {trainer.step}  {split}: {text}"
        if self.bar is not None:
            self.bar.console.print(line)
        else:
            print(line, file=self.stream, flush=True)

    def on_fit_end(self, trainer) -> None:
        self.start_step = None
        if self.bar is not None:
            self.bar.update(self.task, completed=trainer.step)
            self.bar.stop()
            self.bar = None
