"""Knowledge distillation, the Shrink issue's acceptance runs: a student >= 4x smaller than the teacher,
trained alone and distilled from the teacher, over 3 seeds; the table goes into docs/benchmarks.md.

    python bench/distill.py mnist1d                   # teacher mnist1d-cnn (114,698 params), student 18,602
    python bench/distill.py fashion [--teacher RUN]   # teacher fashion-convnet (421,642), student 55,338
    python bench/distill.py all

The teacher is the built-in recipe at full length, seed 0, under --root (default /tmp/powertrain-distill),
trained there when missing (`--teacher RUN_DIR` uses an existing run). Each student run is the teacher's
recipe with the smaller model and the same training schedule, run.seed 0, 1, 2; "distilled" adds
train.distill (alpha 0.5, temperature 4, cached teacher logits). --alpha/--temperature: another setting,
in a section of its own; --reuse: read finished runs under --root instead of training them again.
Not a test: the fashion students take ~20 min (6 runs), its teacher ~30 min, on 2 shared cores. Set
OMP_NUM_THREADS=1 on a shared machine: two threads fighting other jobs for two cores ran ~30x slower here.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import torch

import powertrain

from docs_section import write_section

SETUPS = {
    "mnist1d": {"teacher": "mnist1d-cnn", "student": ["model.conv=[16,32,32]", "model.dense=[32]"]},
    "fashion": {"teacher": "fashion-convnet", "student": ["model.conv=[16,32]", "model.dense=[32]"]},
}
ALPHA, TEMPERATURE = 0.5, 4.0


def teacher_run(name: str, root: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    path = root / f"{name}-teacher"
    if not (path / "eval.json").is_file():
        shutil.rmtree(path, ignore_errors=True)
        print(f"== training the teacher {name} into {path}", flush=True)
        powertrain.train(name, out=path, callbacks=[])
    return path


def student(recipe: str, overrides: list[str], out: Path, reuse: bool = False) -> dict:
    """Train one student into `out` (replacing it), or with `reuse` read a finished run there."""
    reused = reuse and (out / "eval.json").is_file()
    if reused:
        metrics, b = (json.loads((out / f).read_text()) for f in ("eval.json", "bill.json"))
    else:
        shutil.rmtree(out, ignore_errors=True)
        run = powertrain.train(recipe, overrides, out=out, callbacks=[])
        metrics, b = run.metrics, run.bill
    return {"acc": metrics["test"]["accuracy"], "params": b["params"], "reused": reused,
            "steps_per_s": b["steps"] / b["time_s"]["fit"], "train_flops": b["flops"]["train_total"],
            "flops_per_sample": b["flops"]["per_sample_forward"], "j_per_inference": b["j_per_inference_sample"],
            "energy_j": b["energy"]["total_j"], "teacher": b.get("teacher"), "distill": b.get("distill")}


def mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def run_setup(key: str, root: Path, seeds: list[int], given: str | None, alpha: float = ALPHA,
              temperature: float = TEMPERATURE, reuse: bool = False) -> str:
    cfg = SETUPS[key]
    load = os.getloadavg()[0]
    teacher = teacher_run(cfg["teacher"], root, given)
    tev, tbill, tenv = (json.loads((teacher / f).read_text()) for f in ("eval.json", "bill.json", "env.json"))
    rows = {"alone": [], "distilled": []}
    for seed in seeds:
        common = [*cfg["student"], f"run.seed={seed}"]
        rows["alone"].append(student(cfg["teacher"], common, root / f"{key}-student-s{seed}", reuse))
        kd = [*common, f"train.distill.teacher={teacher}", f"train.distill.alpha={alpha}",
              f"train.distill.temperature={temperature}"]
        tag = "" if (alpha, temperature) == (ALPHA, TEMPERATURE) else f"-a{alpha:g}-t{temperature:g}"
        rows["distilled"].append(student(cfg["teacher"], kd, root / f"{key}-distilled{tag}-s{seed}", reuse))
        print(f"{key} seed {seed}: alone {rows['alone'][-1]['acc']:.4f}  distilled {rows['distilled'][-1]['acc']:.4f}",
              flush=True)
    alone, kd = rows["alone"], rows["distilled"]
    d = kd[0]["distill"]
    diff = [b["acc"] - a["acc"] for a, b in zip(alone, kd)]
    lines = [
        f"Teacher `{cfg['teacher']}` (seed 0): {tbill['params']:,} params, test accuracy {tev['test']['accuracy']:.4f}, "
        f"{tbill['flops']['per_sample_forward'] / 1e6:.3g} MFLOP and {tbill['j_per_inference_sample']:.3g} J per "
        f"inference sample (its run: {tenv['torch_threads']} thread(s)). Student: `{cfg['teacher']}` with {' '.join(cfg['student'])} "
        f"({alone[0]['params']:,} params, {tbill['params'] / alone[0]['params']:.1f}x fewer; "
        f"{alone[0]['flops_per_sample'] / 1e6:.3g} MFLOP and {statistics.mean(r['j_per_inference'] for r in alone):.3g} J "
        f"per inference sample), the teacher's training schedule; distilled with alpha {alpha:g}, T {temperature:g}, "
        f"cached teacher logits.",
        "",
        "| student | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std | train FLOPs | steps/s |",
        "|---|" + "---|" * len(seeds) + "---|---|---|",
    ]
    for name, rs in (("trained alone", alone), ("distilled", kd)):
        lines.append(f"| {name} | " + " | ".join(f"{r['acc']:.4f}" for r in rs) + f" | {mean_std([r['acc'] for r in rs])} | "
                     f"{statistics.mean(r['train_flops'] for r in rs):.3g} | {statistics.mean(r['steps_per_s'] for r in rs):.1f} |")
    lines += [
        "",
        f"Distilled minus alone, per seed: {', '.join(f'{x:+.4f}' for x in diff)} (mean {statistics.mean(diff):+.4f}). "
        f"The distilled runs' training FLOPs include the teacher's forward pass over the train split "
        f"({d['teacher_forward_flops']:.3g} FLOP, once: the cache); the teacher's own training "
        f"({tbill['flops']['train_total']:.3g} FLOP) is in its bill, and `powertrain compare` adds it to the students'.",
        f"Measured {time.strftime('%Y-%m-%d')} on CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        + (f"{sum(r['reused'] for r in alone + kd)} of {len(alone + kd)} runs read back with --reuse, as measured "
           f"when they ran; " if any(r["reused"] for r in alone + kd) else "")
        + ("" if all(r["reused"] for r in alone + kd) else f"load average {load:.1f} at the start of this call ")
        + f"(a shared machine: times, steps/s and the estimated J are inflated). Runs under {root}.",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", choices=[*SETUPS, "all"])
    p.add_argument("--root", default="/tmp/powertrain-distill")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher", help="an existing teacher run directory (one setup only)")
    p.add_argument("--alpha", type=float, default=ALPHA, help=f"weight of the hard labels (default {ALPHA})")
    p.add_argument("--temperature", type=float, default=TEMPERATURE, help=f"softmax temperature (default {TEMPERATURE})")
    p.add_argument("--reuse", action="store_true", help="read finished student runs under --root instead of training")
    args = p.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    for key in (SETUPS if args.which == "all" else [args.which]):
        body = run_setup(key, root, args.seeds, args.teacher if args.which != "all" else None, args.alpha,
                         args.temperature, args.reuse)
        name = {"mnist1d": "mnist1d", "fashion": "Fashion-MNIST"}[key]
        setting = "" if (args.alpha, args.temperature) == (ALPHA, TEMPERATURE) else \
            f" with alpha {args.alpha:g}, T {args.temperature:g}"  # no title may start another's: see docs_section
        title = f"Distillation{setting}: {name} (bench/distill.py {key})"
        write_section(title, body)
        print(body)


if __name__ == "__main__":
    main()
