"""Metering overhead: the same Trainer run with the Meter on (windows, FLOP counting, phase timers,
energy backends) and off. Bar: metering adds <= 1% to step time.

Three measures, in one run of N pairs of runs (meter off and on, the order alternating pair by pair):
- best of N (the bar): the fastest run of each arm, as timeit advises. On this shared VM the noise is
  one-sided (the host takes the CPU away for tens of ms; nothing makes a run faster), so the minimum
  converges on the undisturbed time while a mean or a single pair scatters by up to +-30%.
- median of the N paired ratios (min and max shown: the machine's scatter).
- direct: the wall time spent inside metering code itself (every Meter window opened and closed from
  the first step on, with its metrics.jsonl line, wherever it is accounted: epoch windows are stopped in
  the loop and accounted at the next evaluation, checkpoint or the end of fit) over the wall time of the
  training steps. This does not scatter.

    python bench/meter_overhead.py          # writes its table into docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import powertrain
from powertrain import Callback, api

from docs_section import write_section


class StepClock(Callback):
    """Wall time from the start of fit to the last training step (the final evaluation excluded)."""

    def on_fit_start(self, trainer):
        self.t0 = time.perf_counter()

    def on_step_end(self, trainer, loss):
        self.t1 = time.perf_counter()


def timed(fn, calls: list, depth: list):
    """`fn`, recording (start, seconds) of each outermost call into `calls` (nested ones are inside it)."""
    def wrapper(*a, **kw):
        depth[0] += 1
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                calls.append((t, time.perf_counter() - t))
    return wrapper


def run(recipe, metered: bool, tmp: Path) -> tuple[float, float]:
    """(seconds per step, seconds spent inside metering code per step) of one run."""
    clock, calls, depth = StepClock(), [], [0]
    t = api.build_trainer(recipe, tmp, callbacks=[clock])
    if metered:
        t._epoch_window = timed(t._epoch_window, calls, depth)  # epoch windows stopped in the loop
        t._account_epochs = timed(t._account_epochs, calls, depth)  # ... accounted, with their metrics.jsonl lines
        t.meter.begin, t.meter.end = timed(t.meter.begin, calls, depth), timed(t.meter.end, calls, depth)
    else:
        t.meter = None
    t.fit()
    inside = sum(d for start, d in calls if start >= clock.t0)  # all of it, after the last step too
    return (clock.t1 - clock.t0) / t.step, inside / t.step


def bench(name: str, pairs: int, tmp: Path) -> dict:
    recipe = powertrain.load_recipe(name, ["train.eval_every_epochs=1000000"])
    ratios, off, on, direct = [], [], [], []
    for i in range(pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        got = {m: run(recipe, m, tmp / f"{name}-{m}-{i}") for m in order}
        off.append(got[False][0])
        on.append(got[True][0])
        direct.append(got[True][1] / got[True][0])
        ratios.append(got[True][0] / got[False][0] - 1)
    return {"recipe": name, "off": 1 / min(off), "on": 1 / min(on), "best": min(on) / min(off) - 1,
            "ab": statistics.median(ratios), "lo": min(ratios), "hi": max(ratios), "direct": statistics.median(direct)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=["digits-mlp", "mnist1d-cnn"])
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench(n, args.pairs, Path(tmp)) for n in args.recipes]
    lines = ["| recipe | steps/s meter off (best) | steps/s meter on (best) | added step time, best of N (bar <= 1%) "
             "| median of paired ratios (min, max) | direct: time inside metering code |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['recipe']} | {r['off']:.1f} | {r['on']:.1f} | {r['best']:+.2%} {'met' if r['best'] <= 0.01 else 'NOT met'} "
              f"| {r['ab']:+.2%} ({r['lo']:+.2%}, {r['hi']:+.2%}) | {r['direct']:.3%} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        import os
        write_section("Metering overhead (bench/meter_overhead.py)",
                      f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
                      f"load average {os.getloadavg()[0]:.1f} at the end; {args.pairs} pairs of runs, meter off and on, "
                      f"order alternating. The bar is judged on the best run of each arm; the median paired ratio "
                      f"(min and max in brackets: the machine's scatter) and the direct column are shown beside it; the direct column is the wall time spent inside metering code from the "
                      f"first step to the end of fit (Meter windows and their metrics.jsonl lines, the accounting of epoch "
                      f"windows after the last step included) over the wall time of the training steps. The Meter's "
                      f"FLOP count (once, before training) is outside the timed steps.\n"
                      f"Command: `python bench/meter_overhead.py`\n\n{table}")
    sys.exit(0 if all(r["best"] <= 0.01 for r in rows) else 1)


if __name__ == "__main__":
    main()
