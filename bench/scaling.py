"""Scaling: throughput and efficiency of 1 versus 2 processes (DDP, gloo) on this CPU, with the same
recipe, seed and global batch; on a machine with CUDA GPUs, also one GPU's throughput and MFU for
the GPT recipe in bf16 (and N GPUs against one, when there are several). Writes the table into
docs/benchmarks.md ("Scaling out"). Not a test.

    python bench/scaling.py                         # digits-mlp and mnist1d-cnn, 120 steps each
    python bench/scaling.py --recipes mnist1d-cnn --steps 200 --repeats 3 --no-write

Throughput is the bill's: samples trained / training time (fit time less evaluation and checkpoints),
so process start-up is not in it; the job's wall time, start-up included, is beside it. Each process
gets one thread (what torchrun gives each of its workers); "1 process, 2 threads" uses the same two
cores inside one process, for comparison. Efficiency = throughput of N / (N x throughput of 1).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from docs_section import write_section


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run(recipe: str, overrides: list[str], out: Path, nproc: int, threads: int) -> dict:
    """One job; returns its bill plus the wall time of the whole command."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "powertrain", "train", recipe, *overrides, "--out", str(out)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "powertrain", "train", recipe, *overrides, "--out", str(out)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    bill = json.loads((out / "bill.json").read_text())
    return {"bill": bill, "wall_s": wall}


def cpu_rows(recipe: str, steps: int, repeats: int, tmp: Path) -> list[dict]:
    """1 process x 1 thread, 2 processes x 1 thread, 1 process x 2 threads; best of `repeats`, interleaved."""
    overrides = [f"train.max_steps={steps}", "train.log_every=1000000"]
    configs = [("1 process x 1 thread", 1, 1), ("2 processes x 1 thread (DDP)", 2, 1), ("1 process x 2 threads", 1, 2)]
    best: dict[str, dict] = {}
    for rep in range(repeats):
        for name, nproc, threads in configs:
            r = run(recipe, overrides, tmp / f"{recipe}-{nproc}x{threads}-{rep}", nproc, threads)
            sps = r["bill"]["throughput"]["samples_per_s"]
            if name not in best or sps > best[name]["samples_per_s"]:
                best[name] = {"samples_per_s": sps, "wall_s": r["wall_s"], "steps": r["bill"]["steps"],
                              "mfu": r["bill"]["mfu"]["value"], "world": r["bill"]["device"]["world_size"]}
    base = best[configs[0][0]]["samples_per_s"]
    rows = []
    for name, nproc, _ in configs:
        b = best[name]
        rows.append({"recipe": recipe, "config": name, **b,
                     "efficiency": b["samples_per_s"] / (nproc * base) if nproc > 1 else None})
    return rows


def gpu_rows(steps: int, tmp: Path) -> list[dict]:
    """gpt-stdlib in bf16 on one GPU (throughput, MFU), and on all GPUs when there are several."""
    overrides = [f"train.max_steps={steps}", "train.precision=bf16", "train.log_every=1000000",
                 "train.eval_every_steps=1000000"]
    n = torch.cuda.device_count()
    rows, base = [], None
    for nproc in sorted({1, n}):
        r = run("gpt-stdlib", overrides, tmp / f"gpt-gpu-{nproc}", nproc, threads=8)
        sps = r["bill"]["throughput"]["samples_per_s"]
        base = base or sps
        rows.append({"recipe": "gpt-stdlib (bf16)", "config": f"{nproc} x {torch.cuda.get_device_name(0)}",
                     "samples_per_s": sps, "wall_s": r["wall_s"], "steps": r["bill"]["steps"],
                     "mfu": r["bill"]["mfu"]["value"], "world": nproc,
                     "efficiency": sps / (nproc * base) if nproc > 1 else None})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| recipe | processes | steps | samples/s | efficiency | MFU | job wall time (s, start-up included) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        eff = f"{r['efficiency']:.2f}" if r["efficiency"] is not None else "-"
        mfu = f"{r['mfu']:.2%}" if r.get("mfu") is not None else "-"
        lines.append(f"| {r['recipe']} | {r['config']} | {r['steps']} | {r['samples_per_s']:,.0f} | {eff} | {mfu} | "
                     f"{r['wall_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=["digits-mlp", "mnist1d-cnn"])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--gpu-steps", type=int, default=200)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for recipe in args.recipes for row in cpu_rows(recipe, args.steps, args.repeats, Path(tmp))]
        gpu = gpu_rows(args.gpu_steps, Path(tmp)) if torch.cuda.is_available() else []
    text = table(rows + gpu)
    if not gpu:
        text += ("\n\nGPU: none on this machine, so no single-GPU throughput or bf16 MFU for gpt-stdlib here; "
                 "`python bench/scaling.py` measures them where `torch.cuda.is_available()`.")
    notes = (f"CPU: {os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; best of "
             f"{args.repeats}; same recipe, seed and global batch in every row; load averages (1, 5, 15 min) "
             f"{load_before} before and {load_average()} after (other work shared the CPU when it is above the "
             f"core count).\nCommand: `python bench/scaling.py --steps {args.steps} --repeats {args.repeats}`")
    print(notes + "\n\n" + text)
    if not args.no_write:
        write_section("Scaling out (bench/scaling.py)", notes + "\n\n" + text)


if __name__ == "__main__":
    main()
