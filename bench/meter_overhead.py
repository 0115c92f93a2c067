"""Metering overhead: the same Trainer run with the Meter on (windows, FLOP counting, phase timers,
energy backends) and off, interleaved, best of N each. Bar: metering adds <= 1% to step time.

    python bench/meter_overhead.py          # writes its table into docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import powertrain
from powertrain import Callback, api

from docs_section import write_section



class StepClock(Callback):
    def on_fit_start(self, trainer):
        self.t0 = time.perf_counter()

    def on_step_end(self, trainer, loss):
        self.t1 = time.perf_counter()


def steps_per_s(recipe, metered: bool, tmp: Path) -> float:
    clock = StepClock()
    t = api.build_trainer(recipe, tmp, callbacks=[clock])
    if not metered:
        t.meter = None
    t.fit()
    return t.step / (clock.t1 - clock.t0)


def bench(name: str, repeats: int, tmp: Path) -> dict:
    recipe = powertrain.load_recipe(name, ["train.eval_every_epochs=1000000"])
    best = {True: 0.0, False: 0.0}
    for r in range(repeats):
        for metered in (False, True):
            best[metered] = max(best[metered], steps_per_s(recipe, metered, tmp / f"{name}-{metered}-{r}"))
    return {"recipe": name, "off": best[False], "on": best[True], "overhead": best[False] / best[True] - 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recipes", nargs="+", default=["digits-mlp", "mnist1d-cnn"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench(n, args.repeats, Path(tmp)) for n in args.recipes]
    lines = ["| recipe | steps/s meter off | steps/s meter on | added step time (bar <= 1%) |", "|---|---|---|---|"]
    lines += [f"| {r['recipe']} | {r['off']:.1f} | {r['on']:.1f} | {r['overhead']:+.2%} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section("Metering overhead (bench/meter_overhead.py)",
                      f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
                      f"best of {args.repeats} interleaved runs; the Meter's FLOP count (once, before training) is "
                      f"outside the timed steps.\nCommand: `python bench/meter_overhead.py`\n\n{table}")
    sys.exit(0 if all(r["overhead"] <= 0.01 for r in rows) else 1)


if __name__ == "__main__":
    main()
