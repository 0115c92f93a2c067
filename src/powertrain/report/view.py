"""What the report shows of one run, read from its directory (never from a live Trainer): `View`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import RunDirError
from ..run.rundir import RunDir

STATE_TEXT = {
    "complete": "complete",
    "training": "training now (process {pid} holds the run's lock): this page shows the run as it was when made",
    "interrupted": "interrupted at step {step} (a signal; the checkpoint at that step is whole): "
                   "continue with `powertrain resume {path}`",
    "failed": "did not finish: it stopped between checkpoints (a crash, an error or a kill) after step {step}; "
              "continue from the newest checkpoint with `powertrain resume {path}`",
}


# ---------------------------------------------------------------- what a run directory holds
@dataclass
class View:
    """Everything the page shows about one run, read from its directory."""

    run: RunDir
    n: int
    recipe_text: str
    raw: dict
    kind: str
    status: dict
    env: dict
    eval: Optional[dict]
    bill: Optional[dict]
    train: list = field(default_factory=list)  # metrics.jsonl step records
    val: list = field(default_factory=list)  # evaluation records
    windows: list = field(default_factory=list)  # epoch window records
    notes: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.run.path.name

    @property
    def data(self) -> str:
        return str((self.raw.get("data") or {}).get("name", "?"))

    @property
    def device(self) -> str:
        return str((self.bill or {}).get("device", {}).get("name") or self.env.get("device_name") or self.env.get("device", "?"))

    def cumulative(self, key: str) -> tuple[list, list]:
        """(steps, cumulative `key`) over the epoch windows, starting at (0, 0)."""
        steps, total, acc = [0], [0.0], 0.0
        for w in self.windows:
            acc += float(w.get(key) or 0.0)
            steps.append(w["step"])
            total.append(acc)
        return steps, total


def _safe_read(run: RunDir, name: str, notes: list) -> Optional[dict]:
    try:
        return run.read(name, required=False)
    except RunDirError as e:
        notes.append(str(e))
        return None


def load_view(path: str | Path, n: int = 1) -> View:
    run = RunDir.open(path)
    notes: list = []
    text = run.recipe_file.read_text(errors="replace")
    raw = run.raw_recipe()
    try:
        records = run.metrics()
    except RunDirError as e:
        records, _ = [], notes.append(str(e))
    v = View(run=run, n=n, recipe_text=text, raw=raw, kind=run.kind, status=run.status(),
             env=_safe_read(run, "env", notes) or {}, eval=_safe_read(run, "eval", notes),
             bill=_safe_read(run, "bill", notes), notes=notes)
    for r in records:
        if "val" in r:
            v.val.append(r)
        elif r.get("window") == "epoch":
            v.windows.append(r)
        elif "loss" in r:
            v.train.append(r)
    return v
