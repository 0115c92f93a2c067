"""`powertrain report`: a self-contained HTML page per run and over several runs, checked in a real browser
(headless Chromium over the DevTools protocol, tests/browser.py): it loads with no console error, no failed
load and no exception, every figure decodes, and the DOM holds each section. Here: a complete run, an
interrupted one, a crashed one, a derived one, and a page over mixed runs; every built-in recipe's report
is checked where that recipe's run is made (browser.check_report)."""
import json
import os
import shutil
import signal

import pytest

import powertrain
from powertrain.train.callbacks import Callback
from powertrain.report.html import per_class, render, report
from powertrain.run.rundir import RunDir

from browser import Browser, find_chromium

TINY = ["train.max_steps=2", "train.log_every=1", "train.eval_every_steps=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Short complete runs of four recipes, an interrupted run, a crashed one and a derived one. (Every
    built-in recipe's report is checked where its run is made: test_recipes_smoke.py and the files it names.)"""
    root = tmp_path_factory.mktemp("report")
    out = {name: powertrain.train(name, TINY, out=root / name, callbacks=[]).dir
           for name in ("digits-mlp", "digits-cnn", "xor", "mnist1d-mlp")}

    class Interrupt(Callback):  # Ctrl-C at step 3: the step finishes, a checkpoint, then Interrupted
        def on_step_end(self, trainer, loss):
            if trainer.step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        powertrain.train("digits-mlp", ["train.log_every=1"], out=root / "interrupted", callbacks=[Interrupt()])
    out["interrupted"] = root / "interrupted"
    crashed = root / "crashed"  # a run killed between checkpoints: metrics.jsonl and a checkpoint, no eval.json
    shutil.copytree(out["digits-mlp"], crashed)
    for f in ("eval.json", "bill.json"):
        (crashed / f).unlink()
    with open(crashed / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "epoch": 1, "loss": 2.0, "lr": 1e-3, "samples_per_s": 100.0}) + "\n")
    out["crashed"] = crashed
    out["child"] = powertrain.train("digits-mlp", [*TINY, f"model.init_from={out['digits-mlp']}"], out=root / "child",
                                    callbacks=[]).dir
    return out


needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="no chromium on PATH: apt-get install chromium "
                                                                    "(.ci/run installs it)")
BASE = {"summary", "recipe", "curves", "bill", "energy"}


def check_page(page: dict, want: set[str]) -> None:
    assert page["errors"] == [], page["errors"]
    assert want <= set(page["sections"]), f"missing sections {want - set(page['sections'])}"
    assert page["images"] and all(ok for _, ok in page["images"]), [alt for alt, ok in page["images"] if not ok]


@needs_chromium
def test_every_state_of_a_run_renders_in_chromium(runs, tmp_path):
    pages = {name: report([runs[name]], out=tmp_path / f"{name}.html") for name in ("digits-mlp", "interrupted", "crashed", "child")}
    html = pages["digits-mlp"].read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html  # nothing to fetch or run
    with Browser() as b:
        for name, path in pages.items():
            page = b.open(path, screenshot=tmp_path / f"{name}.png" if name in ("digits-mlp", "interrupted") else None)
            want = set(BASE)
            if name in ("interrupted", "crashed"):
                want |= {"unfinished"}
            elif RunDir(runs[name]).read("eval").get("test", {}).get("confusion_matrix"):
                want |= {"confusion"}
            if name == "child":
                want |= {"lineage"}
            check_page(page, want)
    assert (tmp_path / "digits-mlp.png").stat().st_size > 10_000
    interrupted = pages["interrupted"].read_text()
    assert "interrupted at step 3" in interrupted and f"powertrain resume {runs['interrupted']}" in interrupted
    assert "newest checkpoint: <code>step-00000003</code>" in interrupted
    assert "stopped between checkpoints" in pages["crashed"].read_text()
    assert "This run is derived from" in pages["child"].read_text()


@needs_chromium
def test_a_report_over_mixed_runs_compares_them(runs, tmp_path):
    names = ["digits-mlp", "digits-cnn", "mnist1d-mlp", "xor", "child", "crashed", "interrupted"]
    path = report([runs[n] for n in names], out=tmp_path / "all.html")
    text = path.read_text()
    assert "datasets (digits, mnist1d, xor)" in text  # a note when runs mix datasets
    assert "not compared: 6 crashed: failed (no eval.json)" in text
    assert "not compared: 7 interrupted: interrupted (no eval.json)" in text
    assert text.count("<tr><td>") >= 5  # the five finished runs in the compare table
    with Browser() as b:
        page = b.open(path, screenshot=tmp_path / "all.png")
    check_page(page, {"compare", "pareto", "all-curves", "notes", *(f"run{i}-summary" for i in range(1, 8)), "run7-unfinished"})


def test_one_run_goes_to_its_folder_and_the_numbers_are_the_runs(runs):
    path = report([runs["digits-mlp"]])
    assert path == RunDir(runs["digits-mlp"]).report_file
    text = path.read_text()
    ev = RunDir(runs["digits-mlp"]).read("eval")
    assert f"accuracy {ev['test']['accuracy']:.4g}" in text
    assert "estimated:cpu-tdp-per-core" in text and "time by phase" in text
    assert "<details><summary>recipe.yaml" in text  # the recipe, collapsed


def test_per_class_scores_match_sklearn():
    from sklearn.metrics import precision_recall_fscore_support

    y_true = [0, 0, 1, 1, 1, 2, 2, 2, 2, 0]
    y_pred = [0, 1, 1, 1, 0, 2, 2, 1, 2, 0]
    cm = [[0] * 3 for _ in range(3)]
    for t, p in zip(y_true, y_pred):
        cm[t][p] += 1
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    rows = per_class(cm)
    assert [x["precision"] for x in rows] == pytest.approx(p) and [x["recall"] for x in rows] == pytest.approx(r)
    assert [x["f1"] for x in rows] == pytest.approx(f) and [x["support"] for x in rows] == list(s)


def test_pareto_labels_do_not_overlap_even_for_coincident_points():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.text import Text

    from powertrain.report.compare import label_points

    fig, ax = plt.subplots(figsize=(5, 4))
    xs, ys = [1.0, 1.0, 1.01, 1.02, 3.0, 1.0], [0.90, 0.90, 0.901, 0.9, 0.5, 0.899]
    ax.scatter(xs, ys)
    label_points(ax, xs, ys, [str(i + 1) for i in range(len(xs))])
    fig.canvas.draw()
    boxes = [Text.get_window_extent(t) for t in ax.texts]  # the text alone, not its leader line
    assert len(boxes) == 6
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (ax.texts[i].get_text(), ax.texts[j].get_text())
    plt.close(fig)


def test_compare_png_numbers_its_points_and_names_them_in_a_key(runs, tmp_path):
    from powertrain.report.compare import compare

    rows, png = compare([runs["digits-mlp"], runs["digits-cnn"], runs["child"]], png=tmp_path / "c.png")
    assert png.stat().st_size > 10_000 and [r.get("n", i + 1) for i, r in enumerate(rows)] == [1, 2, 3]


def test_report_refuses_what_is_not_a_run(tmp_path):
    from powertrain.errors import RunDirError

    with pytest.raises(RunDirError, match="does not exist"):
        render([tmp_path / "nope"])
    with pytest.raises(RunDirError, match="at least one run"):
        render([])


def test_bill_section_reads_like_the_cli_bill(runs, tmp_path):
    """The physical floor and the throughput as format_bill prints them; the energy method once per panel when
    every bar shares it; a finished run whose bill.json is gone is not told it will come."""
    import base64
    import re

    from powertrain.measure.bill import format_bill
    from powertrain.report.figures import energy_figure

    d = runs["digits-mlp"]
    bill = json.loads((d / "bill.json").read_text())
    page = render([d])
    cli = {line.split("  ")[1].strip(): line.split("  ", 2)[-1].strip() for line in format_bill(bill).splitlines()[1:]
           if not line.startswith("  note") and not line.startswith("   ")}
    assert bill["floor"] and "physical floor" in cli
    assert f"<td>physical floor</td><td>{cli['physical floor']}</td>" in page
    assert f"<td>throughput</td><td>{cli['throughput']}</td>" in page and "e+0" not in cli["throughput"]
    phases = {w.get("energy_method") for w in bill["energy"]["windows"].values()}
    assert len(phases) == 1  # one method for every phase (an estimate here): said once in that panel
    svg = base64.b64decode(re.search(r'base64,([^"]+)"', energy_figure(bill)).group(1)).decode()
    assert svg.count(phases.pop()) <= 2, "the method label repeats under every bar"
    gone = tmp_path / "no-bill"
    shutil.copytree(d, gone)
    (gone / "bill.json").unlink()
    text = render([gone])
    assert "written when training ends" not in text and "ended without a bill.json" in text
