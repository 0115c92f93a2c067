"""CPU threads that fit the machine (settings.choose_threads, measure/hardware.use_threads, the command's
choice before torch loads): the choice for quiet, busy and explicit cases, the free-CPU measurement against
a hand count of /proc/stat, the environment reaching OpenMP, the record on env.json and the bill, and a
resumed run keeping its count (another count gives other bits)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from powertrain import settings
from powertrain.measure.hardware import use_threads
from powertrain.recipe import load_recipe
from powertrain.errors import RecipeError


@pytest.fixture
def fresh(monkeypatch):
    """No process choice yet, no OMP_* from the suite (conftest pins OMP_NUM_THREADS); all put back after."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(settings, "_chosen", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    yield
    torch.set_num_threads(threads)


def test_auto_follows_the_free_cpus(fresh):
    quiet = settings.choose_threads("auto", free=lambda: 3.8, cpus=4, environ={})
    assert (quiet.threads, quiet.wait_policy) == (None, None)  # every CPU free: torch's own default, spinning allowed
    one_busy = settings.choose_threads("auto", free=lambda: 2.7, cpus=4, environ={})
    assert (one_busy.threads, one_busy.wait_policy) == (3, "PASSIVE")
    assert "3 of 4 CPUs free" in one_busy.reason
    all_busy = settings.choose_threads("auto", free=lambda: 0.1, cpus=4, environ={})
    assert all_busy.threads == 1  # at least one
    unknown = settings.choose_threads("auto", free=lambda: None, cpus=4, environ={})
    assert unknown.threads is None and "cannot be measured" in unknown.reason
    assert settings.chosen_threads() is unknown  # the process remembers its last choice


def test_explicit_count_and_the_users_environment_win(fresh):
    never = lambda: pytest.fail("an explicit choice must not measure")  # noqa: E731
    assert settings.choose_threads(3, free=never, cpus=4, environ={}).threads == 3
    env = {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"}
    c = settings.choose_threads("auto", free=never, cpus=4, environ=env)
    assert (c.threads, c.wait_policy) == (None, "ACTIVE") and "OMP_NUM_THREADS=2" in c.reason  # torch read it
    assert settings.choose_threads(1, free=never, cpus=4, environ=env).threads == 1  # train.threads=1 sets torch's count
    kept = settings.choose_threads("auto", keep=2, free=lambda: 1.0, cpus=4, environ={})
    assert (kept.threads, kept.wait_policy) == (2, "PASSIVE") and "same bits" in kept.reason


def test_free_cpus_counts_idle_time_of_this_process_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # cpu2 is not ours
    snaps = iter([{0: (100, 1000), 1: (100, 1000), 2: (0, 1000)},
                  {0: (120, 1040), 1: (160, 1060), 2: (50, 1050)}])  # (idle, all) jiffies
    got = settings.free_cpus(window_s=0, read=lambda: next(snaps))
    assert got == pytest.approx(20 / 40 + 60 / 60)


def test_proc_stat_parser(tmp_path):
    f = tmp_path / "stat"
    f.write_text("cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 10 1 5 100 7 2 3 4 6 0\ncpu1 1 0 0 50 0 0 0 0 0 0\nintr 1 2\n")
    assert settings._proc_stat(str(f)) == {0: (107, 132), 1: (50, 51)}  # guest (6) is inside user already


@pytest.mark.parametrize("value", ["0", "true", "1.5", "two"])
def test_a_bad_thread_count_is_one_line(value):
    with pytest.raises(RecipeError, match=r"train\.threads: expected auto or a whole number"):
        load_recipe("digits-mlp", [f"train.threads={value}"])


def test_use_threads_applies_and_records(fresh, monkeypatch):
    monkeypatch.setattr(settings, "free_cpus", lambda: 0.4)
    rec = use_threads("auto")
    assert torch.get_num_threads() == 1 and rec["threads"] == 1
    assert "note" in rec  # PASSIVE suits the machine, but torch loaded first in this process: said, not claimed
    assert rec["wait_policy"] == "OpenMP's default"
    assert use_threads(2)["threads"] == 2 == torch.get_num_threads()  # an explicit count wins over the choice
    settings._chosen = None
    torch.set_num_threads(1)  # the caller's own choice, with no busy CPU: auto leaves it
    monkeypatch.setattr(settings, "free_cpus", lambda: 64.0)
    assert use_threads("auto")["threads"] == 1


CHILD = r"""
import json, os, sys
import powertrain.settings as s
s.usable_cpus = lambda: 4
s.free_cpus = lambda: 1.2
from powertrain.cli import main
assert "torch" not in sys.modules, "the command must choose threads before torch loads"
code = main(sys.argv[1:])
import torch
print(json.dumps({"code": code, "omp": os.environ.get("OMP_NUM_THREADS"), "policy": os.environ.get("OMP_WAIT_POLICY")}))
"""


def test_the_command_chooses_before_torch_loads(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-c", CHILD, "train", "digits-mlp", "train.max_steps=2",
                        "train.eval_every_steps=2", "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert (got["code"], got["omp"], got["policy"]) == (0, "1", "PASSIVE")
    assert "threads: 1, wait policy PASSIVE (auto: 1 of 4 CPUs free, idle time over 0.2 s)" in p.stdout
    recorded = json.loads((out / "env.json").read_text())["threads"]
    assert recorded == {"threads": 1, "wait_policy": "PASSIVE", "reason": "auto: 1 of 4 CPUs free, idle time over 0.2 s"}
    bill = json.loads((out / "bill.json").read_text())
    assert bill["device"]["threads"] == recorded
    from powertrain.measure.bill import format_bill

    assert "CPU threads               1, wait policy PASSIVE (auto: 1 of 4 CPUs free" in format_bill(bill)


def test_import_powertrain_loads_no_torch_and_train_stays_the_function():
    code = ("import sys, powertrain, powertrain.cli; assert 'torch' not in sys.modules\n"
            "import powertrain.train.lifecycle; from powertrain.train.engine import Trainer\n"
            "from powertrain.api import train; assert powertrain.train is train\n"
            "assert powertrain.Trainer is Trainer and 'load_recipe' in dir(powertrain)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_resume_keeps_the_runs_thread_count(fresh, tmp_path):
    import powertrain

    common = ["train.max_steps=8", "train.eval_every_steps=4", "train.precision=fp32"]
    whole = powertrain.train("digits-mlp", [*common, "train.threads=1"], out=tmp_path / "whole", callbacks=[])
    torch.set_num_threads(2)
    settings._chosen = None
    part = powertrain.train("digits-mlp", [*common, "train.threads=1", "train.max_steps=4"], out=tmp_path / "part",
                            callbacks=[])
    (tmp_path / "part" / "recipe.yaml").write_text((tmp_path / "part" / "recipe.yaml").read_text()
                                                   .replace("threads: 1", "threads: auto"))
    torch.set_num_threads(2)  # a new process would start with torch's default count
    settings._chosen = None
    resumed = powertrain.resume(tmp_path / "part", ["train.max_steps=8"], callbacks=[])
    assert torch.get_num_threads() == 1 and "same bits" in resumed.bill["device"]["threads"]["reason"]
    for a, b in zip(whole.trainer.model.state_dict().values(), resumed.trainer.model.state_dict().values()):
        assert torch.equal(a, b)
    assert part.bill["device"]["threads"]["threads"] == 1
