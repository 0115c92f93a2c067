"""gpt-stdlib's model (4 layers, width 128, block 256, batch 32) on the CPU: tokens/s of powertrain's
Trainer against a plain nanoGPT-style loop of the same model and batches, in one run, interleaved
(plain, powertrain, plain, ...), best of each kept. Bar: ratio >= 0.98.

    python bench/gpt_loop.py            # writes its table into docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from docs_section import write_section
from gpu import plain_tokens_per_s, powertrain_tokens_per_s

SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block": 256, "batch": 32, "vocab": 445, "steps": 40, "warmup": 5}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    cpu = torch.device("cpu")
    plain, ours = [], []
    for _ in range(args.repeats):
        plain.append(plain_tokens_per_s(SHAPE, cpu, "fp32"))
        ours.append(powertrain_tokens_per_s(SHAPE, cpu, "fp32"))
    ratio = max(ours) / max(plain)
    table = "\n".join([
        "| model | plain loop tokens/s (best) | powertrain tokens/s (best) | ratio (bar >= 0.98) |",
        "|---|---|---|---|",
        f"| gpt-stdlib shape: 4 layers, width 128, block 256, batch 32, fp32 | {max(plain):,.0f} | {max(ours):,.0f} | "
        f"{ratio:.3f} {'met' if ratio >= 0.98 else 'NOT met'} |"])
    print(table)
    if not args.no_write:
        write_section("GPT loop on CPU (bench/gpt_loop.py)",
                      f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
                      f"load average {os.getloadavg()[0]:.1f} at the end; {args.repeats} interleaved runs of each, "
                      f"{SHAPE['steps']} timed steps after {SHAPE['warmup']} warm-up steps, random tokens.\n"
                      f"Command: `python bench/gpt_loop.py`\n\n{table}")


if __name__ == "__main__":
    main()
