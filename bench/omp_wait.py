"""OpenMP's wait policy on a small CPU: spinning (libgomp's default) against sleeping (OMP_WAIT_POLICY=PASSIVE)
threads, for powertrain's recipes, on a quiet machine and beside one busy competing process (what a
second job, a test runner or a data loader does to a 2-core machine). Throughput is the bill's
samples/s (training only); runs are interleaved, best of --repeats kept. Writes docs/benchmarks.md.

    python bench/omp_wait.py                 # ~5 minutes on 2 cores
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

RUNS = {  # recipe and overrides: short runs of three sizes of model
    "gpt tiny (width 16, 1 layer, block 16)": ["gpt-stdlib", "data.max_chars=200000", "data.block_size=16",
                                               "model.n_layer=1", "model.n_head=2", "model.n_embd=16",
                                               "train.batch_size=8", "train.max_steps=300", "train.eval_every_steps=300"],
    "digits-mlp (3 epochs)": ["digits-mlp", "train.epochs=3"],
    "mnist1d-cnn (3 epochs)": ["mnist1d-cnn", "train.epochs=3"],
    "gpt-stdlib (60 steps)": ["gpt-stdlib", "train.max_steps=60", "train.eval_every_steps=60"],
}
BUSY = "import time\nt = time.time()\nwhile time.time() - t < 3600: pass\n"


def run(args: list[str], policy: str | None, out: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    subprocess.run([sys.executable, "-m", "powertrain", "train", *args, "train.precision=fp32", "--out", str(out),
                    "--quiet"], env=env, check=True, capture_output=True)
    return json.loads((out / "bill.json").read_text())["throughput"]["samples_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--only", help="run only the named row (its start)")
    a = p.parse_args()
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        n = 0
        for name, args in RUNS.items():
            if a.only and not name.startswith(a.only):
                continue
            res = {}
            for busy in (False, True):
                hog = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
                try:
                    for _ in range(a.repeats):
                        for policy in (None, "PASSIVE"):
                            n += 1
                            res.setdefault((busy, policy), []).append(run(args, policy, Path(tmp) / f"r{n}"))
                finally:
                    if hog:
                        hog.kill()
                        hog.wait()
            q_spin, q_pass = max(res[(False, None)]), max(res[(False, "PASSIVE")])
            b_spin, b_pass = max(res[(True, None)]), max(res[(True, "PASSIVE")])
            rows.append(f"| {name} | {q_spin:,.0f} | {q_pass:,.0f} | {q_pass / q_spin:.2f} | {b_spin:,.0f} | "
                        f"{b_pass:,.0f} | {b_pass / b_spin:.2f} |")
            print(rows[-1], flush=True)
    table = "\n".join(["| run | quiet: spin | quiet: passive | ratio | beside a busy process: spin | passive | ratio |",
                       "|---|---|---|---|---|---|---|", *rows])
    print(table)
    if not a.no_write:
        write_section("OpenMP wait policy (bench/omp_wait.py)",
                      f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
                      f"load average {load_before:.1f} before the runs; training samples/s from the bill (best of "
                      f"{a.repeats}); 'spin' is libgomp's default, 'passive' is OMP_WAIT_POLICY=PASSIVE; the busy "
                      f"process is one Python loop on one core.\n\n{table}")


if __name__ == "__main__":
    main()
