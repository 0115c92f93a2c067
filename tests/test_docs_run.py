"""docs/run.md's rung-2 and rung-3 examples run as written, and each leaves a bill.json."""
import json
from pathlib import Path

from test_documents_examples import python_blocks

DOC = Path(__file__).resolve().parents[1] / "docs" / "run.md"


def test_rung2_and_rung3_examples_each_write_a_bill(tmp_path, capsys):
    blocks = python_blocks(DOC)
    assert len(blocks) == 2
    (tmp_path / "rung3").mkdir()
    for block in blocks:
        exec(block.compiled(DOC), {"RUNS": tmp_path})
    printed = capsys.readouterr().out.split("\n")
    for name in ("rung2", "rung3"):
        bill = json.loads((tmp_path / name / "bill.json").read_text())
        assert bill["flops"]["train_total"] > 0 and bill["energy"]["method"]
    assert printed[0].endswith("True")  # rung 2: bill.json exists
    assert printed[1].startswith("True ")  # rung 3: the meter's FLOPs are 64 steps of the counted step
    rung3 = json.loads((tmp_path / "rung3" / "bill.json").read_text())
    assert rung3["steps"] == 64 and rung3["samples_trained"] == 4096 and rung3["mfu"]["value"] is not None


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_bring_your_own_loop_runs_and_bills(tmp_path, monkeypatch):
    """README's four adapters (Trainer with a DataLoader, track, Lightning, HF Trainer, Keras) run as written;
    each leaves a finished run directory."""
    import pytest

    from test_documents_examples import code_blocks

    monkeypatch.setenv("KERAS_BACKEND", "torch")
    for extra in ("lightning", "transformers", "accelerate", "keras"):
        pytest.importorskip(extra)
    text = README.read_text()
    section = text[text.index("## Bring your own loop"):]
    section = section[:section.index("\n## ", 3)]
    blocks = [b for b in code_blocks(section) if b.lang == "python"]
    assert len(blocks) == 4
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for block in blocks:
        exec(compile(block.code, str(README), "exec"), ns)
    from powertrain.run.rundir import RunDir

    for name in ("byo-trainer", "byo-loop", "byo-lightning", "byo-hf", "byo-keras"):
        bill = json.loads((tmp_path / "runs" / name / "bill.json").read_text())
        assert bill["flops"]["train_total"] > 0 and bill["steps"] == 8, name
        if name != "byo-trainer":  # a bare Trainer writes bill.json and eval.json, no recipe.yaml (rung 2)
            assert RunDir.open(tmp_path / "runs" / name).status()["state"] == "complete"
