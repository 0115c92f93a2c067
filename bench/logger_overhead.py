"""Logger overhead: the same Trainer run with no logger, with TensorBoard (run.tensorboard) and with MLflow
(run.mlflow, a local sqlite store). Bar: each logger adds <= 1% to step time. A sibling of meter_overhead.py.

Measures, from N rounds of the three arms (their order rotating round by round):
- best of N (the bar): the fastest run of each arm, as timeit advises (this VM's noise is one-sided).
- median of the N paired ratios against the no-logger run of the same round (min and max: the scatter).
- direct: the wall time the training thread spends inside the loggers' hooks in the loop (on_log,
  on_eval_end: queueing) over the wall time of the steps; waiting for the writer to empty its queue at
  the end of fit (on_fit_end, once, after the last step) is shown on its own.
- writer: the background thread's own time writing events or MLflow rows, per step (it shares the CPU).
Opening the store (once, at on_fit_start: ~0.1 s for TensorBoard, ~1-2 s for a new MLflow sqlite store)
is outside the timed steps and shown on its own.

    python bench/logger_overhead.py          # writes its table into docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import powertrain
from powertrain import Callback, api
from powertrain.hardware import environment
from powertrain.loggers import MLflowLogger, RunLogger, TensorBoardLogger
from powertrain.rundir import RunDir

from docs_section import write_section

ARMS = ("none", "tensorboard", "mlflow")


class StepClock(Callback):
    """Wall time from the start of fit (after every logger opened its store) to the last training step."""

    def on_fit_start(self, trainer):
        self.t0 = time.perf_counter()

    def on_step_end(self, trainer, loss):
        self.t1 = time.perf_counter()


def instrument(logger: RunLogger, hooks: dict, writes: list, opens: list) -> RunLogger:
    """Time the logger's hooks on the training thread, its writer's calls, and its opening."""
    for name in ("on_log", "on_eval_end", "on_fit_end"):
        fn = getattr(logger, name)

        def wrapper(*a, _fn=fn, _name=name, **kw):
            t = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                hooks[_name] = hooks.get(_name, 0.0) + time.perf_counter() - t
        setattr(logger, name, wrapper)
    write, open_ = logger._write_many, logger._open

    def timed_write(*a, **kw):
        t = time.perf_counter()
        try:
            return write(*a, **kw)
        finally:
            writes.append(time.perf_counter() - t)

    def timed_open(*a, **kw):
        t = time.perf_counter()
        try:
            return open_(*a, **kw)
        finally:
            opens.append(time.perf_counter() - t)
    logger._write_many, logger._open = timed_write, timed_open
    return logger


def run(recipe, arm: str, tmp: Path) -> dict:
    clock, hooks, writes, opens = StepClock(), {}, [], []
    loggers = []
    if arm == "tensorboard":
        loggers = [instrument(TensorBoardLogger(), hooks, writes, opens)]
    elif arm == "mlflow":
        loggers = [instrument(MLflowLogger(f"sqlite:///{tmp.parent / 'mlflow.db'}", experiment="bench"), hooks, writes, opens)]
    run_dir = RunDir.create(recipe, tmp, environment(torch.device("cpu")))  # as `powertrain train` makes it
    t = api.build_trainer(recipe, run_dir, callbacks=[*loggers, clock])  # the clock last: after the stores opened
    t.fit()
    run_dir.unlock()
    for lg in loggers:
        lg.finish(t)
    steps_s = clock.t1 - clock.t0
    in_loop = hooks.get("on_log", 0.0) + hooks.get("on_eval_end", 0.0)
    return {"step_s": steps_s / t.step, "direct": in_loop / steps_s, "writer_s": sum(writes) / t.step,
            "open_s": sum(opens), "end_s": hooks.get("on_fit_end", 0.0)}


def bench(name: str, rounds: int, tmp: Path, steps: int) -> list[dict]:
    # evaluations (and their checkpoints) outside the timed steps; `steps` steps of the recipe as shipped
    recipe = powertrain.load_recipe(name, ["train.eval_every_epochs=1000000", f"train.max_steps={steps}"])
    got = {a: [] for a in ARMS}
    for i in range(rounds):
        order = ARMS[i % 3:] + ARMS[:i % 3]
        for arm in order:
            got[arm].append(run(recipe, arm, tmp / f"{name}-{arm}-{i}"))
    base = [g["step_s"] for g in got["none"]]
    rows = []
    for arm in ARMS[1:]:
        mine = [g["step_s"] for g in got[arm]]
        ratios = [m / b - 1 for m, b in zip(mine, base)]
        rows.append({"recipe": name, "arm": arm, "steps_none": 1 / min(base), "steps_on": 1 / min(mine),
                     "best": min(mine) / min(base) - 1, "ab": statistics.median(ratios), "lo": min(ratios),
                     "hi": max(ratios), "direct": statistics.median(g["direct"] for g in got[arm]),
                     "writer_us": statistics.median(g["writer_s"] for g in got[arm]) * 1e6,
                     "open_s": statistics.median(g["open_s"] for g in got[arm]),
                     "end_ms": statistics.median(g["end_s"] for g in got[arm]) * 1e3,
                     "log_every": recipe.train.log_every})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=["digits-mlp", "mnist1d-cnn"])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=400, help="training steps per run (default 400)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--note", default="", help="a sentence on the machine's state, e.g. that it was shared")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # MLflow's artifacts (./mlruns) land in the temporary folder
        try:
            rows = [r for n in args.recipes for r in bench(n, args.rounds, Path(tmp), args.steps)]
        finally:
            os.chdir(cwd)
    lines = ["| recipe (log_every) | logger | steps/s none (best) | steps/s with logger (best) | added step time, best of N "
             "(bar <= 1%) | median of paired ratios (min, max) | direct: hooks in the loop | writer thread "
             "per step | end of fit: waiting for the writer | opening the store |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['recipe']} ({r['log_every']}) | {r['arm']} | {r['steps_none']:.1f} | {r['steps_on']:.1f} | {r['best']:+.2%} "
              f"{'met' if r['best'] <= 0.01 else 'NOT met'} | {r['ab']:+.2%} ({r['lo']:+.2%}, {r['hi']:+.2%}) | "
              f"{r['direct']:.3%} | {r['writer_us']:.0f} us | {r['end_ms']:.1f} ms | {r['open_s']:.2f} s |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section("Logger overhead (bench/logger_overhead.py)",
                      f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
                      f"load average {os.getloadavg()[0]:.1f} at the end{'; ' + args.note if args.note else ''}. "
                      f"{args.rounds} rounds of three runs of {args.steps} steps of each recipe as shipped (no logger, "
                      f"TensorBoard, MLflow "
                      f"on a local sqlite store), their order rotating. The loggers write at the metrics.jsonl cadence "
                      f"(every log_every steps and each evaluation) from one background thread; the training thread only "
                      f"queues. The bar is judged on the best run of each arm; 'direct' is the wall time inside the "
                      f"loggers' hooks in the loop over the wall time of the steps; 'end of fit' is the one wait, after the "
                      f"last step, for the writer to empty its queue; 'writer' is the "
                      f"background thread's time per step, which shares the CPU with training.\n"
                      f"Command: `python bench/logger_overhead.py`\n\n{table}")
    sys.exit(0 if all(r["best"] <= 0.01 for r in rows) else 1)


if __name__ == "__main__":
    main()
