"""bench/gpu.py: its dry run (tiny sizes, CPU) runs the code a GPU machine runs, and its energy check
compares the Meter's NVML window with a raw counter read (here a fake NVML whose counter the load moves)."""
import subprocess
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_dry_run_prints_every_row():
    p = subprocess.run([sys.executable, "gpu.py", "--dry-run"], cwd=BENCH, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [line for line in p.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 4 and "GPT tokens/s" in rows[1] and "NVML energy" in rows[2] and "fashion-resnet" in rows[3]
    ratio = float(rows[1].rsplit("|", 2)[-2])
    assert 0.3 < ratio < 3  # both loops really ran the same model (a tiny one: noisy, not a bar)


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
