"""The suite's environment: its own cache and config folders, never the user's.

Every folder a run, a library or a child process might read or write under the user's home (powertrain's
cache with its measured peaks and generated datasets, XDG cache/config/data, matplotlib's config) points
into build/test-home/ of this checkout, set here before anything imports powertrain, so subprocesses
inherit it. User settings that change results (POWERTRAIN_CPU_W_PER_CORE, the deprecated POWERTRAIN_CACHE,
POWERTRAIN_DATA) are removed. `.ci/run` deletes build/test-home first: CI sees what a fresh machine sees.

The CPU's peak is measured once into that cache (for the thread counts the suite runs with) and kept even
when the CPU was busy: a peak measured while busy is otherwise not cached, and on a loaded machine every
run's bill would measure it again (a few seconds each).
"""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
from suite_env import SUITE_FOLDERS, TEST_HOME, USER_SETTINGS  # noqa: E402  (tests/suite_env.py)
for _var, _sub in SUITE_FOLDERS.items():
    os.environ[_var] = str(TEST_HOME / _sub)
    (TEST_HOME / _sub).mkdir(parents=True, exist_ok=True)
for _var in USER_SETTINGS:
    os.environ.pop(_var, None)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / "build" / "inductor"))
# one CPU thread count for the whole suite, children included: `train.threads: auto` would measure the free
# CPUs in each process, and another count gives other bits (tests/test_threads.py tests auto without this)
os.environ["OMP_NUM_THREADS"] = str(min(2, os.cpu_count() or 1))
os.environ.pop("OMP_WAIT_POLICY", None)

import torch  # noqa: E402  (after the environment: torch and powertrain read it when they load)

torch.set_num_threads(min(2, torch.get_num_threads()))


def _seed_peak_cache() -> None:
    """fp32 peaks for 1 thread (tests/crashkit.py's children) and this session's count, measured once; one
    measured while the CPU was busy is kept, said so, and measured again by the next session (the higher wins)."""
    from powertrain.measure import peak

    path = peak.cache_dir() / "peak.json"
    entries = peak._read_cache(path)
    threads = torch.get_num_threads()
    todo = {t: _key(peak, t) for t in sorted({1, threads})}
    todo = {t: k for t, k in todo.items() if k not in entries or BUSY_NOTE in entries[k]["source"]}
    if not todo:
        return
    try:
        for t, key in todo.items():
            torch.set_num_threads(t)
            before = peak.cpu_sample()
            p = peak.measure_cpu_peak("fp32")
            busy = peak.busy_reason(before, peak.cpu_sample())
            old = entries.get(key)
            if old is not None and old["flops_per_s"] >= p.flops_per_s:
                continue
            entries[key] = {**p.to_dict(), "source": f"{p.source}; measured by tests/conftest.py for the suite's own "
                                                     f"cache" + (f" {BUSY_NOTE} ({busy})" if busy else "")}
    finally:
        torch.set_num_threads(threads)
    peak._write_cache(path, entries)


BUSY_NOTE = "while busy: measured again by the next session"


def _key(peak, threads: int) -> str:
    now = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return peak._machine_key("fp32")
    finally:
        torch.set_num_threads(now)


_seed_peak_cache()


@pytest.fixture
def tiny_digits():
    """A small deterministic multiclass problem (sklearn digits) as a DataBundle."""
    from powertrain import data

    return data.build({"name": "digits"}, seed=0)
