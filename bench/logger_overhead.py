"""Logger overhead: the same Trainer run with no logger, with TensorBoard (run.tensorboard) and with MLflow
(run.mlflow, a local sqlite store). Bar: each logger costs <= 1% of step time. A sibling of meter_overhead.py.

Measures, from N rounds of the three arms (their order rotating round by round):
- direct (the bar): the wall time the training thread spends inside the loggers' hooks in the loop (on_log,
  on_eval_end: queueing), plus the CPU time of the writer thread (it shares the CPU with training), over
  the wall time of the steps. Waiting for the writer to empty its queue at the end of fit (on_fit_end,
  once, after the last step) is shown on its own.
- best of N: the fastest run of each arm, as timeit advises, and the median of the N paired ratios against
  the no-logger run of the same round (min and max: the scatter). On a shared machine these scatter far
  more than the effect, so they are shown, not judged.
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
from powertrain.measure.hardware import environment
from powertrain.train.loggers import MLflowLogger, RunLogger, TensorBoardLogger
from powertrain.run.rundir import RunDir

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
        start, t = time.perf_counter(), time.thread_time()  # the writer's CPU time: what it takes from training
        try:
            return write(*a, **kw)
        finally:
            writes.append((start, time.thread_time() - t))

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
    writer = sum(cpu for start, cpu in writes if clock.t0 <= start <= clock.t1)  # while the steps ran
    return {"step_s": steps_s / t.step, "direct": in_loop / steps_s, "writer_s": writer / t.step,
            "total": (in_loop + writer) / steps_s,
            "open_s": sum(opens), "end_s": hooks.get("on_fit_end", 0.0)}


def bench(name: str, rounds: int, tmp: Path, steps: int) -> list[dict]:
    """Rows for recipe `name` (or 'name:steps')."""
    name, _, n = name.partition(":")
    steps = int(n) if n else steps
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
                     "total": statistics.median(g["total"] for g in got[arm]),
                     "writer_us": statistics.median(g["writer_s"] for g in got[arm]) * 1e6,
                     "open_s": statistics.median(g["open_s"] for g in got[arm]),
                     "end_ms": statistics.median(g["end_s"] for g in got[arm]) * 1e3,
                     "log_every": recipe.train.log_every})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=["digits-mlp:16000", "mnist1d-cnn:2500"],
                   help="recipes, each with its steps per run (NAME:STEPS): runs of ~10 s, so that MLflow's "
                        "writer (every 5 s) writes during the steps")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=2000, help="steps per run of a recipe given without :STEPS")
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
    lines = ["| recipe (log_every) | logger | direct: hooks in the loop + writer CPU, of step time (bar <= 1%) "
             "| hooks in the loop | writer thread CPU per step | end of fit: waiting for the writer | opening the store "
             "| steps/s none / with logger (best of N) | added step time, best of N | median of paired ratios (min, max) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['recipe']} ({r['log_every']}) | {r['arm']} | {r['total']:.2%} {'met' if r['total'] <= 0.01 else 'NOT met'} "
              f"| {r['direct']:.3%} | {r['writer_us']:.0f} us | {r['end_ms']:.1f} ms | {r['open_s']:.2f} s "
              f"| {r['steps_none']:.0f} / {r['steps_on']:.0f} | {r['best']:+.2%} | {r['ab']:+.2%} ({r['lo']:+.2%}, {r['hi']:+.2%}) |"
              for r in rows]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section("Logger overhead (bench/logger_overhead.py)",
                      f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
                      f"load average {os.getloadavg()[0]:.1f} at the end{'; ' + args.note if args.note else ''}. "
                      f"{args.rounds} rounds of three runs ({', '.join(args.recipes)} steps) of each recipe as shipped "
                      f"(no logger, TensorBoard, MLflow "
                      f"on a local sqlite store), their order rotating. The loggers write at the metrics.jsonl cadence "
                      f"(every log_every steps and each evaluation) from one background thread; the training thread only "
                      f"queues. The bar is judged on the direct measure, which a shared machine does not scatter: the "
                      f"wall time inside the loggers' hooks in the loop plus the writer thread's CPU time (which a busy "
                      f"CPU takes from training), over the wall time of the steps. Beside it: 'hooks' is the wall time inside the "
                      f"loggers' hooks in the loop over the wall time of the steps; 'end of fit' is the one wait, after the "
                      f"last step, for the writer to empty its queue; 'writer' is the "
                      f"background thread's CPU time per step. The best-of-N and paired step-time columns are shown for "
                      f"completeness; on a shared machine they scatter far more than the effect.\n"
                      f"Command: `python bench/logger_overhead.py`\n\n{table}")
    sys.exit(0 if all(r["total"] <= 0.01 for r in rows) else 1)


if __name__ == "__main__":
    main()
