"""powertrain sweep: the space is checked first, trials are real runs, the summary agrees with an
independent reading of the trial directories, workers share a study without losing or repeating a
trial, and a sweep killed mid-trial resumes."""
from __future__ import annotations

import html
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from powertrain.errors import RecipeError  # noqa: E402
from powertrain.recipe import load_recipe  # noqa: E402
from powertrain.study.space import check_space, parse_space  # noqa: E402
from powertrain.study.sweep import Sweep, run_sweep  # noqa: E402

SPACE = {"model.hidden": [[16], [64, 32]], "train.lr": {"log": [1e-3, 1e-2]}, "train.epochs": {"int": [1, 3]}}
FAST = ["train.log_every=1000"]


def _sweep(tmp_path, trials=4, **kw) -> Sweep:
    kw.setdefault("overrides", FAST)
    return Sweep.create("digits-mlp", SPACE, out=tmp_path / "sw", trials=trials, **kw)


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "powertrain", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("space, fragment", [
    ({"train.lrr": {"log": [1e-3, 1e-2]}}, "train.lrr"),
    ({"model.hidden": [[16], "wide"]}, "model.hidden"),
    ({"train.lr": {"log": [0, 1e-2]}}, "log scale needs low > 0"),
    ({"train.epochs": {"int": [5, 2]}}, "must be below"),
    ({"train.epochs": {"int": [1.5, 3]}}, "whole numbers"),
    ({"train.lr": {"uniform": [0, 1]}}, "expected a list of choices"),
    ({"train.lr": []}, "empty list"),
])
def test_bad_space_is_one_line_naming_the_key(space, fragment):
    with pytest.raises(RecipeError) as e:
        check_space(parse_space(space), load_recipe("digits-mlp").to_dict())
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_bad_space_refused_before_any_trial(tmp_path):
    (tmp_path / "space.yaml").write_text("train.epoch: {int: [1, 3]}\n")
    r = _cli("sweep", "digits-mlp", "--space", str(tmp_path / "space.yaml"), "--out", str(tmp_path / "sw"))
    assert r.returncode != 0 and "train.epoch" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "sw").exists()


def test_objectives_and_target_are_checked(tmp_path):
    with pytest.raises(RecipeError, match="NAME:max"):
        _sweep(tmp_path, objectives=["accuracy"])
    with pytest.raises(RecipeError, match="not one of the objectives"):
        _sweep(tmp_path, target="f1>=0.5")
    with pytest.raises(RecipeError, match="a bar on a metric"):
        _sweep(tmp_path, target="energy_j<=5")


def _independent(sweep: Sweep):
    """Each trial's values read from its own eval.json and bill.json, without the summary code."""
    vals = {}
    for d in sorted(sweep.trials_dir.iterdir()):
        ev, bill = json.loads((d / "eval.json").read_text()), json.loads((d / "bill.json").read_text())
        vals[d.name] = (ev["val"]["accuracy"], bill["energy"]["total_j"], ev["stop_reason"])
    return vals


def test_sweep_trials_are_runs_and_the_summary_agrees(tmp_path):
    sweep = _sweep(tmp_path, trials=5, target="accuracy>=0.5", pruner="none")
    s = run_sweep(sweep, say=lambda line: None)
    vals = _independent(sweep)
    assert len(vals) == 5 and s["states"] == {"COMPLETE": 5}
    by_dir = {Path(r["run_dir"]).name: r for r in s["trials"]}
    pts = {name: (acc, e) for name, (acc, e, _) in vals.items()}
    front = {n for n, (a, e) in pts.items()
             if not any(a2 >= a and e2 <= e and (a2 > a or e2 < e) for m, (a2, e2) in pts.items() if m != n)}
    assert {Path(by_dir[n]["run_dir"]).name for n in front} == {f"trial-{k:04d}" for k in s["front"]}
    ok = [n for n, (a, _) in pts.items() if a >= 0.5]
    assert ok, "some trial should reach 0.5 on digits"
    cheapest = min(ok, key=lambda n: pts[n][1])
    assert s["chosen"]["run_dir"].endswith(cheapest)
    # the printed command rebuilds exactly the chosen trial's recipe
    argv = shlex.split(s["chosen"]["command"])
    assert argv[:3] == ["powertrain", "train", "digits-mlp"]
    rebuilt = load_recipe(argv[2], argv[3:]).to_dict()
    trained = load_recipe(str(Path(s["chosen"]["run_dir"]) / "recipe.yaml")).to_dict()
    for section in ("model", "train"):
        assert rebuilt[section] == trained[section]
    assert (sweep.path / "front.png").stat().st_size > 1000 and (sweep.path / "summary.json").is_file()
    from powertrain.report.html import report

    page = report([sweep.path]).read_text()  # the sweep's section, then its trials as compared runs
    assert "sweep sw" in page and "data:image/png;base64," in page and html.escape(s["chosen"]["command"]) in page
    assert all(f"trial-{k:04d}" in page for k in range(5))


def test_pruning_stops_the_run_and_keeps_its_bill(tmp_path):
    sweep = _sweep(tmp_path, trials=6, overrides=[*FAST, "train.epochs=4"])
    sweep.cfg["space"] = {"model.hidden": [[16], [8]]}
    sweep.dims = parse_space(sweep.cfg["space"])
    import optuna

    study, twin = sweep.studies()
    twin.pruner = optuna.pruners.ThresholdPruner(lower=2.0)  # accuracy is never >= 2: prune at the first report
    s = run_sweep(sweep, say=lambda line: None)
    pruned = [r for r in s["trials"] if r["state"] == "PRUNED"]
    assert len(pruned) == 6
    for r in pruned:
        ev = json.loads((Path(r["run_dir"]) / "eval.json").read_text())
        bill = json.loads((Path(r["run_dir"]) / "bill.json").read_text())
        assert ev["stop_reason"] == "pruned" and bill["steps"] == r["pruned_at_step"] < 4 * bill["steps"]
        fit_j = bill["energy"]["windows"]["fit"]["energy_j"]
        assert r["saved_energy_j"] == pytest.approx(fit_j / bill["steps"] * 3 * bill["steps"])


def test_two_workers_lose_and_repeat_no_trial(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS")  # the suite's pin: the sweep shares the CPUs among its workers instead
    sweep = _sweep(tmp_path, trials=6)
    run_sweep(sweep, workers=2, say=lambda line: None)
    study, _ = sweep.studies()
    trials = study.get_trials()
    assert len(trials) == 6 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(dirs)) == 6 and sorted(Path(d).name for d in dirs) == sorted(p.name for p in sweep.trials_dir.iterdir())
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both workers ran trials
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    for d in dirs:
        assert (Path(d) / "eval.json").is_file() and (Path(d) / "bill.json").is_file()
        assert json.loads((Path(d) / "env.json").read_text())["threads"]["threads"] == share


def test_sweep_killed_mid_trial_resumes(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("model.hidden: [[32], [64]]\n")
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "powertrain", "sweep", "digits-mlp", "train.epochs=25", "train.log_every=1000",
           "train.checkpoint_every_steps=5", "--space", str(space), "--trials", "3", "--pruner", "none", "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    second = out / "trials" / "trial-0001" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (second.is_dir() and any(second.glob("step-*"))):
        time.sleep(0.05)
        assert p.poll() is None, p.stderr.read()
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    first = out / "trials" / "trial-0000"
    before = (first / "eval.json").read_bytes()
    r = _cli("sweep", "--resume", str(out), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    states = [t["state"] for t in s["trials"]]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1
    lost = next(t for t in s["trials"] if t["state"] == "FAIL")
    assert "died" in lost["error"] and lost["number"] == 1
    retried = [t for t in s["trials"] if t["state"] == "COMPLETE" and t["run_dir"] == lost["run_dir"]]
    assert len(retried) == 1  # the killed trial's run was resumed from its checkpoint, not started again
    assert (first / "eval.json").read_bytes() == before  # a finished trial is untouched
    done, full = (json.loads((Path(d) / "eval.json").read_text()) for d in (lost["run_dir"], first))
    assert done["stop_reason"] == "completed" and done["step"] == full["step"]  # all 25 epochs, not more


def test_missing_optuna_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    sweep = _sweep(tmp_path)
    with pytest.raises(Exception, match=r"pip install 'powertrain\[sweep\]'"):
        sweep.studies()


def test_resume_of_a_folder_that_is_no_sweep(tmp_path):
    r = _cli("sweep", "--resume", str(tmp_path))
    assert r.returncode != 0 and "not a sweep directory" in r.stderr and "Traceback" not in r.stderr


def _ask_and_tell(sw: Sweep) -> tuple:
    from powertrain.study.sweep import _suggest

    t, sh = sw._next_trial()
    own = tuple(_suggest(sw.dims, t))
    sw.studies()[0].tell(t, [0.5, 1.0])
    sw.studies()[1].tell(sh, 0.5)
    return own


def test_a_resumed_sweep_does_not_repeat_the_first_settings(tmp_path):
    sweep = _sweep(tmp_path, trials=6)
    first = {_ask_and_tell(sweep) for _ in range(3)}
    again = Sweep(sweep.path)  # what powertrain sweep --resume opens, in a new process
    assert not first & {_ask_and_tell(again) for _ in range(3)}


def test_two_sweeps_of_one_recipe_share_a_database_without_sharing_a_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    a = Sweep.create("digits-mlp", SPACE, out=tmp_path / "a", trials=1, storage=url)
    _ask_and_tell(a)
    b = Sweep.create("digits-mlp", SPACE, out=tmp_path / "b", trials=1, storage=url)
    assert b._next_trial() is not None and len(b.studies()[0].get_trials()) == 1
