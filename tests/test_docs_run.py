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
