"""bf16 autocast against fp32 on this CPU, for the built-in recipes' models: training speed, the final test
metric at the same number of steps, and what `train.precision: auto`'s probe picks for the model.

Each recipe trains twice with the same seed, steps and schedule (cut to a few seconds where the recipe
is long: `train.max_steps`, a complete one-cycle schedule when the recipe has one), fp32 then bf16;
speed is the bill's training throughput (evaluation and checkpoints excluded). The probe column runs
the probe `auto` would run at the start of the full recipe (autoprecision.py), on a fresh copy.

    python bench/precision.py                      # writes the table into docs/benchmarks.md
    python bench/precision.py --recipes digits-mlp --steps 5 --no-write   # a tiny check
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import powertrain
from powertrain import Trainer, data, models
from powertrain.train import precision as autoprecision
from powertrain.measure.hardware import cpu_has_native_bf16

from docs_section import write_section

# recipe -> overrides that keep its two runs to seconds (steps of the recipe's own batch size)
RECIPES = {
    "digits-mlp": [],  # the whole recipe: 840 steps
    "mnist1d-cnn": [],  # the whole recipe: 2160 steps
    "mnist1d-mlp": ["train.max_steps=1000"],
    "mnist1d-gru": ["train.max_steps=300"],
    "mnist1d-transformer": ["train.max_steps=500"],
    "fashion-convnet": ["train.max_steps=400"],
    "fashion-autoencoder": ["train.max_steps=400"],
    "fashion-resnet": ["train.max_steps=30", "data.train_limit=4000"],
    "gpt-stdlib": ["train.max_steps=60"],
}


def metric_of(metrics: dict) -> tuple[str, float]:
    test = metrics.get("test") or metrics.get("val") or {}
    for name in ("accuracy", "mse", "loss"):
        if name in test:
            return name, test[name]
    raise KeyError(f"no accuracy or loss among {sorted(test)}")


def train(name: str, overrides: list[str], precision: str, out: Path) -> dict:
    run = powertrain.train(name, [*overrides, f"train.precision={precision}", "train.compile=false"], out=out,
                           callbacks=[])
    metric, value = metric_of(run.metrics)
    return {"steps": run.bill["steps"], "steps_s": run.bill["throughput"]["samples_per_s"] / run.trainer.cfg.batch_size,
            "metric": metric, "value": value}


def probe(name: str) -> tuple[str, float]:
    """What `auto` picks for the whole recipe here (its probe, without the short-run shortcut), and a
    longer probe's speedup (3 s of alternating steps, median of each) on the same copy and batch."""
    recipe = powertrain.load_recipe(name, ["train.compile=false"])
    bundle = data.build(recipe.data.model_dump(), seed=recipe.run.seed)
    torch.manual_seed(recipe.run.seed)
    trainer = Trainer(models.build(recipe.model.model_dump(), bundle.meta), bundle, recipe.train, callbacks=[], meter=False)
    real, steps = autoprecision.probe_speedup, []

    def keep(step, **kw):
        steps.append(step)
        return real(step, **kw)

    short, autoprecision.SHORT_RUN_S, autoprecision.probe_speedup = autoprecision.SHORT_RUN_S, 0.0, keep
    try:
        note = trainer._decide_precision()[1]
    finally:
        autoprecision.SHORT_RUN_S, autoprecision.probe_speedup = short, real
    return note, real(steps[0], budget_s=3.0, max_pairs=1000) if steps else float("nan")


def bench(names: list[str], steps: int | None, tmp: Path) -> list[dict]:
    rows = []
    for name in names:
        overrides = [f"train.max_steps={steps}"] if steps else RECIPES.get(name, [])
        t0 = time.perf_counter()
        fp32 = train(name, overrides, "fp32", tmp / f"{name}-fp32")
        bf16 = train(name, overrides, "bf16", tmp / f"{name}-bf16")
        note, step_speedup = probe(name)
        rows.append({"recipe": name, "overrides": " ".join(overrides) or "(whole recipe)", "fp32": fp32, "bf16": bf16,
                     "speedup": bf16["steps_s"] / fp32["steps_s"], "step_speedup": step_speedup, "probe": note,
                     "wall_s": time.perf_counter() - t0})
        print(f"{name}: runs {rows[-1]['speedup']:.2f}x, steps {step_speedup:.2f}x, {fp32['metric']} {fp32['value']:.4f} "
              f"-> {bf16['value']:.4f}, probe: {note} ({rows[-1]['wall_s']:.0f} s)", flush=True)
    return rows


def write_table(rows: list[dict]) -> str:
    lines = ["| recipe | run | fp32 steps/s | bf16 steps/s | bf16 speedup (runs) | bf16 speedup (steps, 3 s) | test metric "
             "| fp32 | bf16 | auto's probe (1 s) picks |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["fp32"], r["bf16"]
        lines.append(f"| {r['recipe']} | {a['steps']} steps: {r['overrides']} | {a['steps_s']:.1f} | {b['steps_s']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['step_speedup']:.2f}x | {a['metric']} | {a['value']:.4f} | {b['value']:.4f} | {r['probe']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES))
    p.add_argument("--steps", type=int, default=None, help="train every recipe this many steps (default: RECIPES)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench(args.recipes, args.steps, Path(tmp))
    table = write_table(rows)
    print(table)
    if not args.no_write:
        write_section("bf16 against fp32 on CPU (bench/precision.py)",
                      f"CPU: {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}, torch "
                      f"{torch.__version__}, {time.strftime('%Y-%m-%d')}. Each recipe trained twice (one run each, "
                      f"fp32 then bf16 autocast), same seed, steps and schedule; steps/s from the bill's training "
                      f"throughput (evaluation and checkpoints excluded): one run each on a shared machine, so load "
                      f"on one run moves this ratio (digits-mlp's fp32 run took 1.5 s to 15 s in repeats minutes "
                      f"apart); do not read it alone. 'steps, 3 s' alternates fp32 and bf16 forward+backward "
                      f"steps on one batch for 3 s and compares the medians (load falls on both alike). The last "
                      f"column is the probe that "
                      f"`train.precision: auto` runs at the start of the whole recipe (bf16 only if >= "
                      f"{autoprecision.SPEEDUP_BAR:.2f}x; a run expected under {autoprecision.SHORT_RUN_S:.0f} s "
                      f"keeps fp32 without probing).\n"
                      f"Command: `python bench/precision.py`\n\n{table}")


if __name__ == "__main__":
    main()
