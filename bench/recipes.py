"""Full-length runs of the built-in recipes against their bars: what each reaches, in how long, at what
energy. Writes the table into docs/benchmarks.md ("Recipes"). Not a test: the runs take minutes each.

    python bench/recipes.py                          # every recipe whose data is on this machine
    python bench/recipes.py mnist1d-cnn digits-mlp   # some of them
    python bench/recipes.py mnist1d-gru --seeds 0 1 2

A recipe whose data files are missing (CIFAR-10, an image folder) is listed as skipped, with the reason.
A GPU recipe (fashion-resnet: hours on 2 CPU cores) runs its reduced CPU version where there is no CUDA,
listed without pass or fail.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

import powertrain
from powertrain.errors import PowertrainError
from powertrain.recipe import builtin_recipes

from docs_section import DOCS, write_section


@dataclass
class Bar:
    split: str  # "test" or "val"
    metric: str
    threshold: Optional[float]  # None: report only
    higher: bool = True
    max_time_s: Optional[float] = None  # wall time, where the issue sets one
    whole_command: bool = False  # time `powertrain train NAME` as a new process (start and imports included)
    note: str = ""
    cpu_run: tuple[str, ...] = ()  # a GPU recipe: without CUDA, run this reduced version instead (no pass/fail)

    def text(self) -> str:
        if self.threshold is None:
            return f"report {self.split} {self.metric}" + (f" ({self.note})" if self.note else "")
        op = ">=" if self.higher else "<="
        t = f"{self.split} {self.metric} {op} {self.threshold:g}"
        if self.max_time_s:
            t += f" within {self.max_time_s / 60:g} min"
        return t + (f" ({self.note})" if self.note else "")


BARS = {
    "xor": Bar("test", "accuracy", 1.0),
    "digits-mlp": Bar("test", "accuracy", 0.97),
    "digits-cnn": Bar("test", "accuracy", 0.98),
    "mnist1d-mlp": Bar("test", "accuracy", 0.68, note="published MLP"),
    "mnist1d-cnn": Bar("test", "accuracy", 0.94, note="published CNN"),
    "mnist1d-gru": Bar("test", "accuracy", 0.91, note="published GRU"),
    "mnist1d-transformer": Bar("test", "accuracy", 0.85),
    "csv-mlp": Bar("test", "accuracy", 0.95),
    "diabetes-linear": Bar("test", "r2", None, note="least squares on the same split: 0.329"),
    "mnist1d-speedrun": Bar("test", "accuracy", 0.95, max_time_s=10, whole_command=True,
                            note="the whole `powertrain train` command"),
    "fashion-convnet": Bar("test", "accuracy", 0.915, max_time_s=900),
    "fashion-speedrun": Bar("test", "accuracy", 0.935, max_time_s=900, whole_command=True),
    "fashion-resnet": Bar("test", "accuracy", 0.935, note="GPU recipe",
                          cpu_run=("train.max_steps=20", "data.train_limit=2000")),
    "fashion-autoencoder": Bar("test", "mse", None, higher=False),
    "fashion-vae": Bar("test", "elbo_nats", None, note="ELBO per sample, nats; higher is better"),
    "cifar10-cnn": Bar("test", "accuracy", None, note="needs the CIFAR-10 files"),
    "image224-cnn": Bar("test", "accuracy", None, note="needs an image folder"),
    "gpt-stdlib": Bar("val", "loss", 1.6, higher=False, max_time_s=600, note="nats/char"),
}


def run_one(name: str, seed: int, root: Path, overrides: tuple[str, ...] = ()) -> dict:
    bar = BARS.get(name, Bar("test", "accuracy", None))
    out = root / f"{name}-s{seed}"
    t0 = time.perf_counter()
    if bar.whole_command:  # a user's wall time: a new Python, its imports, the run, the printed bill
        import subprocess
        import sys

        subprocess.run([sys.executable, "-m", "powertrain", "train", name, f"run.seed={seed}", *overrides,
                        "--out", str(out)], check=True, capture_output=True)
        wall_s = time.perf_counter() - t0
        run = powertrain.api.Run(out, powertrain.RunDir(out).recipe(), powertrain.RunDir(out).read("eval"), None,
                                 powertrain.RunDir(out).read("bill"))
    else:
        run = powertrain.train(name, [f"run.seed={seed}", *overrides], out=out, callbacks=[])
        wall_s = time.perf_counter() - t0
    value = run.metrics.get(bar.split, {}).get(bar.metric)
    return {"value": value, "wall_s": wall_s, "bill": run.bill, "recipe": run.recipe}


def row(name: str, seeds: list[int], root: Path) -> dict:
    bar = BARS.get(name, Bar("test", "accuracy", None))
    reduced = bar.cpu_run if bar.cpu_run and not torch.cuda.is_available() else ()
    try:
        runs = [run_one(name, s, root, reduced) for s in seeds]
    except PowertrainError as e:
        return {"name": name, "bar": bar, "skipped": str(e).split(";")[0]}
    values = [r["value"] for r in runs]
    ok = None
    if bar.threshold is not None and not reduced:
        ok = all((v >= bar.threshold) if bar.higher else (v <= bar.threshold) for v in values)
        if bar.max_time_s:
            ok = ok and all(r["wall_s"] <= bar.max_time_s for r in runs)
    first = runs[0]
    return {"name": name, "bar": bar, "values": values, "ok": ok, "wall_s": [r["wall_s"] for r in runs],
            "params": first["bill"]["params"], "energy_j": first["bill"]["energy"]["total_j"],
            "energy_method": first["bill"]["energy"]["method"], "model": first["recipe"].model.name,
            "data": first["recipe"].data.name, "seeds": seeds, "reduced": reduced}


def fmt_values(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def table(rows: list[dict]) -> str:
    lines = ["| recipe | model | params | data | bar | reached | pass | wall time s | energy J (first seed) | command |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cmd = f"`powertrain train {r['name']}`"
        if "skipped" in r:
            lines.append(f"| {r['name']} | | | | {r['bar'].text()} | skipped: {r['skipped']} | - | | | {cmd} |")
            continue
        if len(r["seeds"]) > 1:
            cmd = f"`python bench/recipes.py {r['name']} --seeds {' '.join(map(str, r['seeds']))}`"
        passed = {True: "yes", False: "**no**", None: "-"}[r["ok"]]
        if r["reduced"]:
            cmd = f"`powertrain train {r['name']} {' '.join(r['reduced'])}`"
            passed = "- (no GPU: reduced CPU run, not the bar)"
        wall = "/".join(f"{w:.0f}" for w in r["wall_s"])
        lines.append(f"| {r['name']} | {r['model']} | {r['params']:,} | {r['data']} | {r['bar'].text()} | "
                     f"{fmt_values(r['values'])} | {passed} | {wall} | {r['energy_j']:.3g} ({r['energy_method']}) | {cmd} |")
    return "\n".join(lines)


def merge(old_doc: str, new_lines: list[str]) -> list[str]:
    """Rows of the table already in the docs, with this run's recipes replaced (others kept), by name."""
    key = lambda line: line.split("|")[1].strip()  # noqa: E731
    rows = {key(l): l for l in old_doc.splitlines() if l.startswith("| ") and not l.startswith("| recipe ")}
    rows.update({key(l): l for l in new_lines})
    return [rows[k] for k in sorted(rows)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="*", help="recipe names (default: all built-in recipes)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    import os

    names, load = args.recipes or sorted(builtin_recipes()), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name in names:
            print(f"== {name}", flush=True)
            rows.append(row(name, args.seeds, Path(tmp)))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    if args.no_write:
        return
    stamp = (f"- {', '.join(names)}: CPU {torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')}, load average {load:.1f} before the runs")
    old = DOCS.read_text() if DOCS.exists() else ""
    section = old[old.find("## Recipes (bench/recipes.py)"):] if "## Recipes (bench/recipes.py)" in old else ""
    section = section[: section.find("\n## ", 1)] if "\n## " in section[1:] else section
    stamps = [l for l in section.splitlines() if l.startswith("- ")][-12:]
    head = text.splitlines()[:2]
    write_section("Recipes (bench/recipes.py)",
                  "Full-length runs of the built-in recipes (`python bench/recipes.py [NAME ...] [--seeds ...]`). "
                  "Wall time is the whole `train` call: data, training, evaluations, bill. cifar10-cnn and "
                  "image224-cnn need files this machine lacks: tests/test_image_recipes.py trains both end to end on "
                  "generated CIFAR-10 binary batches and a PNG folder. Runs:\n\n"
                  + "\n".join(stamps + [stamp]) + "\n\n" + "\n".join(head + merge(section, text.splitlines()[2:])))


if __name__ == "__main__":
    main()
