"""A CLI that fits people's habits: --help with an example for every command, --quiet / --no-progress,
`powertrain runs`, `powertrain predict` (CSV, .npy, image, prompt; the inference billed), `powertrain plan
--device cpu` in units that fit, `powertrain report` from the command line, and a LICENSE that matches."""
import json
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

import powertrain
from powertrain import data
from powertrain.errors import DataError
from powertrain.infer.predict import predict
from powertrain.cli import EXAMPLES, main, parser
from powertrain.run.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from datafiles import write_image_folder  # noqa: E402

GPT = {"data": {"name": "text", "block_size": 16, "val_fraction": 0.1}, "model": {"name": "gpt", "n_layer": 1, "n_head": 2,
       "n_embd": 16}, "train": {"max_steps": 3, "batch_size": 8, "log_every": 100}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("habits")
    out = {}
    for name, over in (("digits-mlp", ["train.epochs=1"]), ("csv-mlp", ["train.max_steps=3"]),
                       ("diabetes-linear", ["train.max_steps=3"])):
        out[name] = powertrain.train(name, over, out=root / "runs" / name, callbacks=[]).dir
    write_image_folder(root / "images", classes=("cat", "dog"), per_class=4, size=(12, 12))
    out["images"] = root / "images"
    out["image224-cnn"] = powertrain.train("image224-cnn", [f"data.path={root / 'images'}", "data.size=32",
                                                            "train.max_steps=2", "train.batch_size=4"],
                                           out=root / "runs" / "image", callbacks=[]).dir
    (root / "corpus.py").write_text("".join(f"def f{i}(x):\n    return x + {i % 7}\n\n" for i in range(60)))
    gpt = json.loads(json.dumps(GPT))
    gpt["data"]["path"] = str(root / "corpus.py")
    out["gpt"] = powertrain.train(gpt, out=root / "runs" / "gpt", callbacks=[]).dir
    return out


# ---------------------------------------------------------------- --help and its examples
def test_every_command_help_lists_its_options_and_one_example_that_parses():
    p = parser()
    commands = p._subparsers._group_actions[0].choices
    assert set(commands) >= {"train", "report", "runs", "predict", "plan", "compare"}
    for name, sub in commands.items():
        text = sub.format_help()
        assert "options:" in text and "-h, --help" in text, name
        assert name in EXAMPLES, f"`powertrain {name} --help` has no example: add one to cli.EXAMPLES"
        assert f"example:\n  {EXAMPLES[name]}" in text, name
        argv = shlex.split(EXAMPLES[name])
        assert argv[:2] == ["powertrain", name]
        p.parse_args(argv[1:])  # the example is a valid command line (argparse exits on a bad one)


# ---------------------------------------------------------------- --quiet, --no-progress
def test_quiet_prints_only_the_run_directory_and_no_progress_keeps_the_results(tmp_path, capsys):
    assert main(["train", "xor", "train.max_steps=40", "train.log_every=10", "--quiet", "--out", str(tmp_path / "q")]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'q'}\n"
    assert main(["train", "--no-progress", "xor", "train.max_steps=40", "--out", str(tmp_path / "n"), "train.log_every=10"]) == 0
    out = capsys.readouterr().out
    assert "step 10/40" not in out and "test: loss" in out and f"run written to {tmp_path / 'n'}" in out
    assert main(["resume", str(tmp_path / "q"), "train.max_steps=50", "-q"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'q'}\n"


# ---------------------------------------------------------------- runs
def test_runs_lists_every_state_newest_first(runs, tmp_path, capsys):
    folder = tmp_path / "runs"
    shutil.copytree(runs["digits-mlp"], folder / "a-complete")
    time.sleep(0.01)
    failed = folder / "group" / "b-failed"  # nested one level: still found
    shutil.copytree(runs["digits-mlp"], failed)
    (failed / "eval.json").unlink()
    (failed / "bill.json").unlink()
    (folder / "not-a-run").mkdir()
    for p in (folder / "a-complete" / "env.json", failed / "env.json"):  # ages: the failed one is newer
        p.touch()
        time.sleep(0.02)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom powertrain.run.rundir import RunDir\n"
                               "RunDir(sys.argv[1]).lock(); print('locked', flush=True); time.sleep(60)", str(folder / "a-complete")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert RunDir(folder / "a-complete").status()["state"] == "training"  # a writer wins: a resume extends it
        holder.kill()
        holder.wait()
        assert RunDir(folder / "a-complete").status()["state"] == "complete"  # eval.json and no writer: ended
        training = folder / "c-training"
        shutil.copytree(runs["digits-mlp"], training)
        (training / "eval.json").unlink()
        time.sleep(0.02)
        (training / "env.json").touch()  # the newest
        holder2 = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom powertrain.run.rundir import RunDir\n"
                                    "RunDir(sys.argv[1]).lock(); print('locked', flush=True); time.sleep(60)", str(training)],
                                   stdout=subprocess.PIPE, text=True)
        assert holder2.stdout.readline().strip() == "locked"
        st = RunDir(training).status()
        assert st["state"] == "training" and st["pid"] == holder2.pid
        assert main(["runs", str(folder)]) == 0
        text = capsys.readouterr().out
    finally:
        for h in (holder, locals().get("holder2")):
            if h is not None:
                h.kill()
                h.wait()
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["run", "recipe", "status", "step", "headline"]
    assert [ln.split()[0] for ln in lines[1:4]] == ["c-training", "group/b-failed", "a-complete"]  # newest first
    assert "training" in lines[1] and "failed" in lines[2] and "complete" in lines[3]
    acc = RunDir(runs["digits-mlp"]).read("eval")["test"]["accuracy"]
    assert f"test accuracy {acc:.4g}" in lines[3] and " J (est.)" in lines[3]
    assert f"group/b-failed: failed; continue with `powertrain resume {failed}`" in text
    assert "not-a-run" not in text
    assert main(["runs", str(folder), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)  # the lock holders are gone: c-training ended between checkpoints
    assert [(r["run"], r["state"]) for r in rows] == [("c-training", "failed"), ("group/b-failed", "failed"),
                                                      ("a-complete", "complete")]
    assert main(["runs", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


# ---------------------------------------------------------------- predict
def test_predict_npy_standardises_raw_inputs_as_training_did_and_bills_the_inference(runs, tmp_path, capsys):
    import torch

    from powertrain.api import load_trainer

    raw = data.build({"name": "digits", "normalize": False}).test.tensors[0][:20].numpy()
    np.save(tmp_path / "x.npy", raw)
    trainer = load_trainer(RunDir(runs["digits-mlp"]))
    with torch.no_grad():
        want = trainer.model.eval()(trainer.data.test.tensors[0][:20]).argmax(1).tolist()
    r = predict(runs["digits-mlp"], tmp_path / "x.npy")
    assert [int(p["class"]) for p in r["predictions"]] == want
    assert r["bill"]["energy"]["windows"]["final_eval"]["flops"] == 20 * r["bill"]["flops"]["per_sample_forward"]
    assert r["bill"]["j_per_inference_sample"] > 0 and r["bill"]["energy"]["method"]
    assert main(["predict", str(runs["digits-mlp"]), str(tmp_path / "x.npy")]) == 0
    cap = capsys.readouterr()
    assert cap.out.splitlines()[0].startswith("0: class ") and len(cap.out.splitlines()) == 20
    assert cap.err.startswith("inference: 20 samples, ") and "J per sample" in cap.err and "estimated" in cap.err
    assert main(["predict", str(runs["digits-mlp"]), str(tmp_path / "x.npy"), "--out", str(tmp_path / "p.json")]) == 0
    doc = json.loads((tmp_path / "p.json").read_text())
    assert len(doc["predictions"]) == 20 and doc["bill"]["j_per_inference_sample"] > 0


def test_predict_csv_by_column_name_image_and_prompt(runs, tmp_path, capsys):
    import csv

    src = Path(powertrain.__file__).parent / "recipe" / "builtin" / "data" / "breast_cancer.csv"
    rows = list(csv.reader(open(src)))
    head = rows[0]
    order = list(reversed(range(len(head))))  # columns in another order, the target among them
    with open(tmp_path / "b.csv", "w", newline="") as f:
        w = csv.writer(f)
        for r in rows[:6]:
            w.writerow([r[i] for i in order])
    r = predict(runs["csv-mlp"], tmp_path / "b.csv")
    assert len(r["predictions"]) == 5 and {p["class"] for p in r["predictions"]} <= {"benign", "malignant"}
    with open(tmp_path / "short.csv", "w") as f:
        f.write("radius_mean\n1.0\n")
    with pytest.raises(DataError, match="no column"):
        predict(runs["csv-mlp"], tmp_path / "short.csv")
    r = predict(runs["diabetes-linear"], _numbers_csv(tmp_path / "d.csv", 3, 10))
    assert len(r["predictions"]) == 3 and all(isinstance(p["value"], float) for p in r["predictions"])
    img = sorted((runs["images"] / "cat").iterdir())[0]
    r = predict(runs["image224-cnn"], img)
    assert r["predictions"][0]["class"] in ("cat", "dog") and 0.5 <= r["predictions"][0]["probability"] <= 1
    assert len(predict(runs["image224-cnn"], runs["images"] / "dog")["predictions"]) == 4
    with pytest.raises(DataError, match="image input needs a run trained on image files"):
        predict(runs["digits-mlp"], img)
    assert main(["predict", str(runs["gpt"]), "def f", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("def f") and len(out.out) == len("def f") + 12 + 1  # the prompt, 12 tokens, a newline
    assert "inference: 12 samples" in out.err and "upper bound" in out.err
    assert main(["predict", str(runs["digits-mlp"]), str(tmp_path / "none.npy")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _numbers_csv(path: Path, n: int, width: int) -> Path:
    path.write_text("\n".join(",".join(f"{(i + j) % 7 / 10:.2f}" for j in range(width)) for i in range(n)) + "\n")
    return path


# ---------------------------------------------------------------- plan
def test_plan_takes_the_cpu_and_never_rounds_to_nothing(monkeypatch, capsys):
    from powertrain.measure import Peak
    from powertrain.study.plan import human_energy, human_time

    fake = Peak(device="cpu: Test CPU (2 threads)", dtype="fp32", flops_per_s=1.5e11, source="measured: test")
    monkeypatch.setattr("powertrain.measure.cpu_peak", lambda dtype="fp32", *a, **k: fake)
    assert main(["plan", "--device", "cpu", "--params", "1e5", "--tokens", "1e6"]) == 0
    text = capsys.readouterr().out
    assert "1 x cpu: Test CPU (2 threads) (fp32)" in text and "1.5e+11 FLOP/s" in text
    assert "time             10 s" in text  # 6e11 FLOP / (1.5e11 x 0.4)
    assert "0.00 days" not in text and " 0 kWh" not in text and "estimated:" in text
    assert main(["plan", "--params", "1e5", "--tokens", "1e5", "--price-per-kwh", "0.3"]) == 0
    small = capsys.readouterr().out
    assert "0.00 days" not in small and " 0 kWh" not in small and "152 us (" in small and " J at the facility" in small
    assert main(["plan", "--params", "7e9", "--count", "64"]) == 0
    big = capsys.readouterr().out
    assert "days (" in big and "MWh" in big and " t (" in big
    assert [human_time(s) for s in (0.0004, 42, 600, 36000, 5 * 86400, 3e9)] == \
        ["400 us", "42 s", "10 min", "10 h", "5 days", "95.1 years"]
    assert [human_energy(j) for j in (0.0005, 12, 7200, 3.6e9, 3.6e13)] == ["0.5 mJ", "12 J", "2 Wh", "1 MWh", "10 GWh"]


# ---------------------------------------------------------------- report from the command line, LICENSE
def test_report_command_writes_the_page(runs, tmp_path, capsys):
    assert main(["report", str(runs["digits-mlp"]), "--out", str(tmp_path / "r.html")]) == 0
    assert capsys.readouterr().out.startswith(f"report written to {tmp_path / 'r.html'}")
    assert main(["report", str(runs["digits-mlp"]), str(runs["csv-mlp"]), "--out", str(tmp_path / "two.html"), "--quiet"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'two.html'}\n"
    assert 'id="compare"' in (tmp_path / "two.html").read_text()


def test_the_license_file_is_the_one_pyproject_names():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
