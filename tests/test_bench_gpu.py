"""bench/gpu.py: its dry run (tiny sizes, CPU) runs the code a GPU machine runs, and its energy check
compares the Meter's NVML window with a raw counter read (here a fake NVML whose counter the load moves)."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_dry_run_prints_every_row():
    p = subprocess.run([sys.executable, "gpu.py", "--dry-run"], cwd=BENCH, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [line for line in p.stdout.splitlines() if line.startswith("| ")]
    names = ["check", "GPT tokens/s", "GPT tokens/s", "NVML energy", "first loss, fp32 vs bf16", "AdamW fused",
             "torch.compile", "resumed, vs uninterrupted", "fashion-speedrun train.epochs=1",
             "fashion-speedrun train.compile=reduce-overhead", "fashion-speedrun train.compile=reduce-overhead"]
    assert len(rows) == len(names) and all(n in r for n, r in zip(names, rows)), rows
    for row in rows[1:3]:  # eager, then compiled
        cells = [c.strip() for c in row.split("|")[1:-1]]
        plain, ours, ratio = (float(c.split()[0].replace(",", "")) for c in cells[1:])
        assert plain > 0 and ours > 0 and ratio == pytest.approx(ours / plain, rel=0.01, abs=0.001)  # no timing bar
    assert "eager" in rows[1] and "compiled (eager backend), 0 graph breaks" in rows[2]
    rows = rows[:1] + rows[2:]  # the rows below keep their places
    assert "no GPU: not measured" in rows[2]
    fp32, bf16 = (float(c) for c in rows[3].split("|")[2:4])
    assert math.isfinite(fp32) and math.isfinite(bf16) and fp32 > 0 and bf16 > 0
    assert "fused expected: False" in rows[4] and "fused: False" in rows[4] and "as expected" in rows[4]
    assert "no recompilation" in rows[5]  # frames compiled after step 1 and in evaluation (eager): 0
    assert rows[6].endswith("| bit-equal |")  # on the CPU a resumed run is the uninterrupted one, bit for bit
    assert "whole command" in rows[7] and all("dry run: not run" in r for r in rows[8:]), rows[7:]  # IDX files


def test_energy_row_matches_a_raw_counter(monkeypatch):
    sys.path.insert(0, str(BENCH))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    from measure.test_energy import FakeNvml

    import gpu

    fake = FakeNvml([1_000_000])

    def work(seconds):
        fake.energy_mj[0] += 123_456  # mJ: what the GPU would have drawn

    row = gpu.energy_row(torch.device("cpu"), 1.0, nvml=fake, work=work)
    assert "123.5 J (raw)" in row and "123.5 J (measured:nvml)" in row and (row.endswith("| +0.00% |") or row.endswith("| -0.00% |"))
