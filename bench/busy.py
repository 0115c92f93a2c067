"""Speed where users run it: the quick start and a short mnist1d-cnn run, for powertrain and for a plain PyTorch
loop, alone, beside one busy process and beside two, in one run. Each cell is the wall time of the whole command
(interpreter start, imports, data, training, test evaluation), as a user waits for it; the ratios are against the
same runner alone. A busy process is one Python loop on one core (another job, a test runner, a browser tab).

    python bench/busy.py                 # ~15 minutes on 2 cores; writes the table into docs/benchmarks.md
    python bench/busy.py --dry-run       # a few seconds per cell: the harness, not the figures
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from docs_section import write_section

BUSY = "import time\nt = time.time()\nwhile time.time() - t < 3600: pass\n"
WORKLOADS = {  # name -> recipe overrides (the quick start is `powertrain train`: mnist1d-cnn as shipped)
    "quick start (powertrain train)": [],
    "mnist1d-cnn, 4 epochs": ["train.epochs=4"],
}
DRY = ["train.max_steps=20", "train.eval_every_steps=20"]

# The loop a PyTorch user writes for the same recipe: powertrain builds data and model (so both start from the
# same tensors and weights), the loop is plain torch with torch's default threads; test accuracy at the end.
PLAIN = r"""
import math, sys, torch, torch.nn.functional as F
import powertrain
from powertrain import data, models
r = powertrain.load_recipe("mnist1d-cnn", sys.argv[1:])
torch.manual_seed(r.run.seed)
b = data.build(r.data.model_dump(), seed=r.run.seed)
m = models.build(r.model.model_dump(), b.meta)
tc = r.train
opt = torch.optim.AdamW(m.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay) \
    if tc.optimizer == "adamw" else torch.optim.Adam(m.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
x, y = b.train.tensors
spe = math.ceil(len(x) / tc.batch_size)
total = tc.max_steps or tc.epochs * spe
step = 0
while step < total:
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(r.run.seed * 1_000_003 + step // spe))
    for i in range(0, len(x), tc.batch_size):
        idx = order[i:i + tc.batch_size]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x[idx]), y[idx]).backward()
        opt.step()
        step += 1
        if step == total:
            break
m.eval()
xt, yt = b.test.tensors
with torch.no_grad():
    print("test accuracy", (m(xt).argmax(1) == yt).float().mean().item())
"""


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0


def commands(overrides: list[str], out: Path) -> dict[str, list[str]]:
    return {"powertrain": [sys.executable, "-m", "powertrain", "train", "mnist1d-cnn", *overrides, "--out", str(out),
                           "--quiet"],
            "plain loop": [sys.executable, "-c", PLAIN, *overrides]}


def measure(repeats: int, dry: bool) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "KMP_"))}  # the machine's defaults
    rows, n = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in WORKLOADS.items():
            overrides = [*overrides, *DRY] if dry else overrides
            cells: dict = {}
            for busy in (0, 1, 2):
                hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
                try:
                    for _ in range(repeats):
                        for runner, cmd in commands(overrides, Path(tmp) / f"r{n}").items():
                            n += 1
                            cells.setdefault((runner, busy), []).append(timed(cmd, env))
                finally:
                    for h in hogs:
                        h.kill()
                        h.wait()
            for runner in ("powertrain", "plain loop"):
                t = [min(cells[(runner, b)]) for b in (0, 1, 2)]
                rows.append({"workload": name, "runner": runner, "alone_s": t[0], "busy1_s": t[1], "busy2_s": t[2]})
                print(row_line(rows[-1]), flush=True)
    return rows


def row_line(r: dict) -> str:
    a = r["alone_s"]
    return (f"| {r['workload']} | {r['runner']} | {a:.1f} | {r['busy1_s']:.1f} ({r['busy1_s'] / a:.2f}x) | "
            f"{r['busy2_s']:.1f} ({r['busy2_s'] / a:.2f}x) |")


def table(rows: list[dict]) -> str:
    head = ["| workload | runner | alone (s) | beside 1 busy process (s, x alone) | beside 2 (s, x alone) |",
            "|---|---|---|---|---|"]
    return "\n".join(head + [row_line(r) for r in rows])


def verdict(rows: list[dict]) -> str:
    worst = max(r["busy1_s"] / r["alone_s"] for r in rows if r["runner"] == "powertrain")
    return f"{'met' if worst <= 1.5 else 'NOT met'} (worst {worst:.2f}x)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=1, help="runs per cell, the fastest kept (default 1)")
    p.add_argument("--dry-run", action="store_true", help="20 steps per run, nothing written")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    load = os.getloadavg()[0]
    rows = measure(a.repeats, a.dry_run)
    text = table(rows)
    print(text)
    if not (a.no_write or a.dry_run):
        write_section("Busy machines (bench/busy.py)",
                      f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}, load average {load:.1f} before the runs; "
                      f"wall time of the whole command, fastest of {a.repeats}; the plain loop uses torch's default "
                      f"threads and OpenMP settings, powertrain its own choice (train.threads: auto). Goal: "
                      f"powertrain beside one busy process <= 1.5x its time alone: {verdict(rows)}.\n"
                      f"Command: `python bench/busy.py`\n\n{text}")


if __name__ == "__main__":
    main()
