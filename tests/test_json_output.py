"""`--json` on compare, plan, explain and audit: stdout is one JSON document and nothing else, and it holds
the same figures as the files the command writes (or, for plan, its text output); `--quiet` leaves no
third-party INFO line (MLflow's) on the terminal."""
import json
import subprocess
import sys

import pytest

import powertrain
from powertrain.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("json") / "digits"
    return powertrain.train("digits-mlp", ["train.max_steps=10", "data.test_fraction=0.5", "train.device=cpu"],
                            out=out, callbacks=[]).dir


def _json(capsys, argv):
    assert main(argv) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # the whole of stdout: one document, nothing before or after it


def test_compare_json_rows_match_the_bill(run_dir, capsys, tmp_path):
    doc = _json(capsys, ["compare", str(run_dir), str(run_dir), "--json", "--png", str(tmp_path / "p.png")])
    bill = json.loads((run_dir / "bill.json").read_text())
    acc = json.loads((run_dir / "eval.json").read_text())["test"]["accuracy"]
    assert doc["metric"] == "accuracy" and len(doc["rows"]) == 2 and doc["png"] == str(tmp_path / "p.png")
    row = doc["rows"][0]
    assert row["train_flops"] == bill["flops"]["train_total"] and row["metric"] == pytest.approx(acc)
    assert row["energy_j"] == pytest.approx(bill["energy"]["total_j"]) and (tmp_path / "p.png").exists()


def test_plan_json_holds_the_figures_the_text_prints(capsys):
    doc = _json(capsys, ["plan", "--params", "7e9", "--device", "h100", "--count", "8", "--json"])
    assert doc["flops"] == pytest.approx(6 * 7e9 * 20 * 7e9, rel=1e-9)  # 6 N D, D = 20 N (Chinchilla)
    assert main(["plan", "--params", "7e9", "--device", "h100", "--count", "8"]) == 0
    text = capsys.readouterr().out
    assert f"FLOPs            {doc['flops']:.3g}" in text and f"MFU              {doc['mfu']['value']:.1%}" in text
    assert doc["time_s"] == pytest.approx(doc["flops"] / (8 * doc["peak"]["flops_per_s"] * doc["mfu"]["value"]))


def test_explain_json_is_explain_json(run_dir, capsys):
    pytest.importorskip("captum")
    doc = _json(capsys, ["explain", str(run_dir), "--n", "4", "--method", "saliency", "--json"])
    assert doc == json.loads((run_dir / "explain.json").read_text())
    assert doc["n"] == 4 and "saliency" in doc["methods"]


def test_audit_json_is_audit_json(run_dir, capsys):
    doc = _json(capsys, ["audit", str(run_dir), "--n", "100", "--json"])
    assert doc == json.loads((run_dir / "audit.json").read_text())
    assert 0 <= doc["auc"] <= 1 and doc["members"]["n"] > 0


def test_quiet_prints_no_mlflow_info_lines(tmp_path):
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p = subprocess.run([sys.executable, "-m", "powertrain", "train", "xor", "train.max_steps=3", f"run.mlflow={uri}",
                        "--out", str(tmp_path / "r"), "--quiet"], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)  # MLflow puts a sqlite store's artifacts under ./mlruns
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(tmp_path / "r"), p.stdout
    assert " INFO " not in p.stderr and "mlflow" not in p.stderr.lower(), p.stderr
    from mlflow.tracking import MlflowClient  # the run was still logged

    kept = json.loads((tmp_path / "r" / "mlflow.json").read_text())
    assert MlflowClient(uri).get_run(kept["run_id"]).data.metrics
