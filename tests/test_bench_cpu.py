"""bench/peers.py and bench/precision.py in their tiny modes: the code the published tables come from runs,
and the peers really train the same thing. Lightning and Keras are in the `bench` extra, not in `dev`:
their rows are checked where they are installed and a missing one is named with the extra to install."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def rows(stdout: str) -> dict[str, list[str]]:
    table = [line.strip("| ").split(" | ") for line in stdout.splitlines() if line.startswith("| ")]
    return {r[0]: r[1:] for r in table[1:]}  # row 0: the header


def test_peers_tiny_run_trains_every_installed_peer_the_same_way():
    p = subprocess.run([sys.executable, "peers.py", "--steps", "5", "--repeats", "1", "--no-write"], cwd=BENCH,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    table = rows(p.stdout)
    expected = {"plain PyTorch", "powertrain"}
    for peer, name, module in (("PyTorch Lightning", "Lightning", "lightning"), ("Keras 3 (torch backend)", "Keras", "keras")):
        if importlib.util.find_spec(module):
            expected.add(peer)
        else:
            assert f"{name} is not installed: pip install -e '.[bench]'" in p.stderr
    assert set(table) == expected
    for peer, (steps, steps_s, ratio, acc, same) in table.items():
        assert int(steps) == 5 and float(steps_s) > 0 and 0 <= float(acc) <= 1
    assert table["plain PyTorch"][2] == "1.000"
    assert table["powertrain"][4] == "True"  # the same batches, init and updates as the plain loop: same weights
    if "PyTorch Lightning" in table:
        assert table["PyTorch Lightning"][4] == "True"


def test_a_missing_peer_is_named_with_its_extra(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    import peers

    monkeypatch.setitem(sys.modules, "lightning", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "keras", None)
    assert peers.available() == {"Lightning": False, "Keras": False}
    err = capsys.readouterr().err.splitlines()
    assert err == ["Lightning is not installed: pip install -e '.[bench]' (the bench extra: lightning, keras)",
                   "Keras is not installed: pip install -e '.[bench]' (the bench extra: lightning, keras)"]


@pytest.mark.timeout(300)
def test_precision_tiny_run_prints_both_precisions_and_the_probe():
    p = subprocess.run([sys.executable, "precision.py", "--recipes", "digits-mlp", "--steps", "5", "--no-write"],
                       cwd=BENCH, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    (name, row), = rows(p.stdout).items()
    run, fp32_s, bf16_s, speedup, step_speedup, metric, fp32, bf16, probe = row
    assert name == "digits-mlp" and run.startswith("5 steps") and metric == "accuracy"
    assert float(fp32_s) > 0 and float(bf16_s) > 0 and float(step_speedup.rstrip("x")) > 0 and 0 <= float(fp32) <= 1 and 0 <= float(bf16) <= 1
    assert probe.startswith(("bf16 (auto: probe", "fp32 (auto: bf16 probe not measurably faster", "fp32 (auto: this CPU has no"))
