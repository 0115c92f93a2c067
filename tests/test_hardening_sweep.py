"""Issue 21, sweeps: a damaged journal (a cut-short last record is dropped with a note and the sweep goes on;
other damage is one line, and --summary rebuilds the table from the trial folders), the baseline billed like
the trials (no run pays the process's start-up), honest summaries (printed once; trials still running said)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

pytest.importorskip("optuna")

from powertrain.study.summary import format_summary, summarize  # noqa: E402
from powertrain.study.sweep import Sweep, run_sweep  # noqa: E402


@pytest.fixture
def cli_run(capsys):
    """`powertrain ARGS` in this process: (exit status, stdout, stderr)."""
    from powertrain import cli

    def run(*args):
        capsys.readouterr()
        code = cli.main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return run


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished sweep of xor over two widths (2 trials), and its summary read from the whole journal."""
    out = tmp_path_factory.mktemp("sweep") / "sw"
    sweep = Sweep.create("xor", {"model.hidden": [[4], [8]]}, overrides=["train.epochs=2"], out=out, trials=2)
    summary = run_sweep(sweep, say=lambda *a: None)
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE", "COMPLETE"]
    return out, summary


@pytest.fixture
def copy(finished, tmp_path):
    out = tmp_path / "sw"
    shutil.copytree(finished[0], out)
    return out


def rows(summary) -> list:
    return [(t["number"], t["state"], t["overrides"], t["measured"]["val"], t["measured"]["energy_j"])
            for t in summary["trials"]]


@pytest.mark.parametrize("cut", [1, 0.5, -1])
def test_a_cut_short_last_record_is_dropped_with_a_note_and_the_sweep_goes_on(finished, copy, cut, cli_run):
    """What a kill during a journal write leaves: a record's first bytes without their newline (1 byte, half of
    it, all but the newline)."""
    journal = copy / "journal.log"
    whole = journal.read_bytes()
    record = whole.splitlines(keepends=True)[-1]
    n = cut if isinstance(cut, int) and cut > 0 else (len(record) - 1 if cut == -1 else int(len(record) * cut))
    journal.write_bytes(whole + record[:n])
    r = cli_run("sweep", "--resume", str(copy), "--json")
    assert r.returncode == 0, r.stderr
    assert "the sweep journal's last record was cut short" in r.stderr and f"dropped it ({n} bytes)" in r.stderr
    after = journal.read_bytes()  # the study goes on from the records before it (opening it may add records)
    assert after.startswith(whole) and all(json.loads(line) for line in after.splitlines())
    assert rows(json.loads(r.stdout)) == rows(finished[1])


@pytest.mark.parametrize("damage, line", [
    ("garbage", 3), ("random", None), ("last", None), ("blank", 2),
])
def test_other_damage_is_one_line_and_summary_rebuilds_the_table_from_the_trial_folders(finished, copy, damage, line,
                                                                                        cli_run):
    journal = copy / "journal.log"
    lines = journal.read_bytes().splitlines(keepends=True)
    if damage == "garbage":
        lines.insert(2, b"this is not a record\n")
    elif damage == "random":
        lines[1] = bytes(range(128, 256)) + b"\n"  # not UTF-8
        line = 2
    elif damage == "last":
        lines.append(b'{"op_code": 6, "trial_id"\n')  # whole line (with its newline), but not JSON
        line = len(lines)
    else:
        lines.insert(1, b"\n")
    journal.write_bytes(b"".join(lines))
    r = cli_run("sweep", "--resume", str(copy))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"journal.log' line {line} is damaged" in r.stderr and "--summary" in r.stderr
    r = cli_run("sweep", "--resume", str(copy), "--summary", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert "rebuilt from the 2 trial folders" in s["note"]
    assert rows(s) == rows(finished[1])  # the same table as the whole journal gave
    assert s["front"] == finished[1]["front"]


def test_a_trial_folder_without_eval_json_is_incomplete_in_the_rebuilt_table(finished, copy, cli_run):
    (copy / "journal.log").write_bytes(b"\xff\xfe\n")
    (copy / "trials" / "trial-0001" / "eval.json").unlink()
    r = cli_run("sweep", "--resume", str(copy), "--summary")
    assert r.returncode == 0, r.stderr
    assert "INCOMPLETE" in r.stdout and "trial 1 is still running in another worker (or was cut short)" in r.stdout


def test_the_summary_is_printed_once_and_says_when_a_trial_still_runs(copy, cli_run):
    r = cli_run("sweep", "--resume", str(copy))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Pareto front over") == 1 and r.stdout.count("  #  state") == 1, r.stdout
    sweep = Sweep(copy)
    study, _ = sweep.studies()
    running = study.ask()  # another worker's trial, in progress
    running.set_user_attr("host", "elsewhere")
    text = format_summary(summarize(sweep, png=False))
    assert f"trial {running.number} is still running in another worker" in text and "summary is partial" in text


CHILD = textwrap.dedent("""
    import sys, pathlib
    import powertrain
    from powertrain import Callback
    from powertrain.study.sweep import warm_up

    class Imports(Callback):  # the modules a run imports inside its billed fit window
        def on_fit_start(self, t): self.before = set(sys.modules)
        def on_fit_end(self, t): self.new = sorted(set(sys.modules) - self.before)

    folder = pathlib.Path(sys.argv[1])
    cold = "torchmetrics" in sys.modules
    warm_up(folder)
    spy = Imports()
    powertrain.train("digits-mlp", ["train.max_steps=3"], out=folder / "run", callbacks=[spy])
    print(cold, "torchmetrics" in sys.modules, len(spy.new), " ".join(m for m in spy.new if "." not in m))
""")


def test_the_baseline_is_billed_like_the_trials_no_run_pays_the_process_start_up(tmp_path):
    """The issue: a baseline that alone paid ~1.1 s of process start-up (torchmetrics' import on its first
    evaluation, inside its fit window). In a fresh process, which has not imported torchmetrics, the sweep's
    warm-up does it, and the first billed run then imports nothing while it is billed, as every later run."""
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-800:]
    cold, imported, n_new, names = (r.stdout.split("\n")[0].split(" ", 3) + [""])[:4]
    assert cold == "False" and imported == "True"  # the process started without it: the warm-up imported it
    assert n_new == "0", names  # the billed run imported nothing
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".warm-up")]  # the warm-up left nothing


def test_the_front_reads_energy_in_joules_with_plain_ticks_and_learning_rates_are_short(tmp_path, monkeypatch):
    """Issue 20's polish of the sweep front: the axis says "energy (J)" with ticks like 0.4, not "energy_j" and
    4x10^-1; a sampled learning rate has at most 4 significant digits, and the trial trained with that value."""
    import matplotlib.figure

    from powertrain.study.summary import _plain_tick

    labels = []
    real = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **k):
        ax = fig.axes[0]
        fig.canvas.draw()
        labels.append((ax.get_xlabel(), [t.get_text() for t in ax.get_xticklabels() if t.get_text()]))
        return real(fig, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    sweep = Sweep.create("xor", {"train.lr": {"log": [1e-3, 1e-1]}}, overrides=["train.epochs=2"], out=tmp_path / "sw",
                         trials=2)
    s = run_sweep(sweep, say=lambda *a: None)
    xlabel, ticks = labels[-1]
    assert xlabel == "energy (J) (log scale)" and ticks and not any("^" in t or "times" in t for t in ticks), ticks
    assert all(float(t.rstrip("kMGT")) > 0 for t in ticks), ticks  # plain numbers
    assert [_plain_tick(v, "energy_j") for v in (0.4, 2.0, 1500.0, 2e6)] == ["0.4", "2", "1.5k", "2M"]
    for t in s["trials"]:
        (text,) = t["overrides"]
        value = text.split("=", 1)[1]
        assert len(value.replace("0.", "").lstrip("0").replace(".", "").split("e")[0]) <= 4, text
        recipe = yaml.safe_load((Path(t["run_dir"]) / "recipe.yaml").read_text())
        assert recipe["train"]["lr"] == float(value)  # the trial trained with the value shown
