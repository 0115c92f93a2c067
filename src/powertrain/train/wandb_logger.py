"""Weights & Biases logging as a Callback (`run.wandb: true` in a recipe), on the pattern of loggers.py:
the hooks queue, one background thread writes at metrics.jsonl's cadence (never per step).

A W&B run per powertrain run: the resolved recipe as its config, metrics by step (train/..., val/...,
cost/...), the bill's figures at the last step, and the bill and eval.json in its summary (as `bill` and
`eval`) and as files. It is OFFLINE unless the environment's WANDB_MODE says otherwise (`online` uploads
as W&B itself would; `disabled` logs nothing), and it is written under the run directory (<run>/wandb/);
`wandb sync <run>/wandb/offline-run-*` uploads an offline run later. The W&B run's id is kept in the run
directory's wandb.json, so a resumed run logs into the same W&B run.

>>> from powertrain.train.wandb_logger import WandbLogger
>>> trainer = Trainer(model, data, cfg, run_dir="runs/mine", callbacks=[WandbLogger()])  # doctest: +SKIP
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from ..errors import RecipeError, need_extra
from ..run.atomic import write_json
from ..run.records import read_json
from .loggers import RunLogger, _flatten, bill_figures


class WandbLogger(RunLogger):
    """`project`: the W&B project (default: the recipe's name); `dir`: where W&B writes (default: the run
    directory, so <run>/wandb/)."""

    def __init__(self, project: Optional[str] = None, dir: Optional[str | Path] = None):
        need_extra("wandb", "wandb", "run.wandb")
        super().__init__()
        self.project, self.dir = project, Path(dir) if dir is not None else None
        self.wb = None  # the wandb Run

    def _open(self, trainer) -> None:
        import wandb

        run = trainer.run
        if self.dir is None:
            if run is None:
                raise RecipeError("WandbLogger: the Trainer has no run_dir; pass WandbLogger(dir=...)")
            self.dir = run.path
        kept = read_json(run.path / "wandb.json", False) if run is not None else None
        recipe = run.recipe() if run is not None and run.recipe_file.exists() else None
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True,
                                  save_code=False, x_save_requirements=False)
        self.wb = wandb.init(
            project=self.project or (recipe.name if recipe is not None else "powertrain"),
            name=run.path.name if run is not None else None, dir=str(self.dir),
            mode=os.environ.get("WANDB_MODE") or "offline",  # offline unless the environment says otherwise
            config=_flatten(recipe.to_dict()) if recipe is not None else None,
            id=kept["id"] if kept else None, resume="allow" if kept else None, settings=settings,
            tags=[run.kind] if recipe is not None else None, reinit="create_new")
        if run is not None and not kept:
            write_json(run.path / "wandb.json", {"id": self.wb.id, "project": self.wb.project,
                                                 "dir": str(getattr(self.wb.settings, "sync_dir", "") or "")})

    def _write(self, step: int, values: dict) -> None:
        self.wb.log(values, step=step)

    def _finish(self, trainer, bill: Optional[dict]) -> None:
        if bill:
            self.wb.log(bill_figures(bill), step=trainer.step)
            self.wb.summary["bill"] = bill
        run = trainer.run
        if run is None:
            return
        ev = run.read("eval", required=False)
        if ev:
            self.wb.summary["eval"] = ev
        for f in (run.bill_file, run.eval_file, run.recipe_file):  # files in the W&B run's folder are its files
            if f.exists():
                shutil.copy2(f, Path(self.wb.dir) / f.name)

    def _close(self, status: str) -> None:
        if self.wb is not None:
            self.wb.finish(exit_code=0 if status == "FINISHED" else 1)
