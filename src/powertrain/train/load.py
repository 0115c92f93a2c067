"""Reading a trained run back: its Trainer (final weights or a named checkpoint), its model in any
form (fp32, pruned, int8), and its metrics recomputed. Every stage after training (eval, export,
predict, generate, explain, audit, derived runs) loads a run through here.

>>> model, recipe, trainer = load_model("runs/digits-mlp")  # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import RunDirError
from ..models import int8
from ..recipe import Recipe
from ..run import checkpoint
from ..run.rundir import RunDir
from . import distributed
from .engine import Trainer
from .lifecycle import build_trainer
from .metrics import loss_names


def evaluate(run_dir: str | Path, split: str = "test", checkpoint: Optional[str] = None) -> dict:
    """Recompute a split's metrics from the run's final weights (or the checkpoint named, e.g.
    'step-00000040'). A damaged newest checkpoint is refused, naming the file and the older one."""
    run = RunDir.open(run_dir)
    if run.kind == "quantized" and not checkpoint:
        trainer = load_model(run.path)[2]
    else:
        trainer = load_trainer(run, checkpoint)
    metrics = trainer.evaluate(split)
    metrics.update(loss_names(trainer.model, trainer.task, metrics["loss"]))  # as in eval.json: mse, elbo_nats
    return metrics


def load_trainer(run: RunDir, checkpoint_name: Optional[str] = None, teacher: bool = False) -> Trainer:
    """A Trainer (writing nothing) of a run's recipe holding the run's final weights, or the named checkpoint's."""
    distributed.init_process_group()
    weights = distributed.on_main(lambda: str(run.final_weights(checkpoint_name)))
    recipe = run.recipe()
    if Path(weights).is_dir() and checkpoint.is_sharded(Path(weights)):  # FSDP: loaded by its strategy
        trainer = build_trainer(recipe, run, callbacks=[], teacher=teacher)
        trainer.resume(Path(weights).name)
        return trainer
    trainer = build_trainer(recipe, run, callbacks=[], teacher=teacher, writes=False)
    trainer.adopt_recorded_precision(run.read("bill", required=False))  # 'auto': as the run's probe decided
    trainer.strategy.load_best(Path(weights) if Path(weights).is_file() else Path(weights) / "model.safetensors",
                               trainer.model, trainer.device)
    return trainer


def load_model(run_dir: str | Path) -> tuple[nn.Module, Recipe, Trainer]:
    """Any run's final model, in eval mode: fp32 (trained or pruned) on the run's device, or int8 (quantized) on the CPU.
    Returns (model, recipe, trainer), the trainer holding the run's data.

    >>> model, recipe, trainer = load_model("runs/digits-mlp-int8")  # doctest: +SKIP
    """
    run = RunDir.open(run_dir)
    if run.kind == "quantized":
        return load_quantized(run, run.recipe())
    trainer = load_trainer(run)
    return trainer.model.eval(), run.recipe(), trainer


def load_quantized(run: RunDir, recipe: Recipe) -> tuple[nn.Module, Recipe, Trainer]:
    """(int8 model, recipe, trainer) of a quantized run: the recipe's model, quantized the same way
    (models/int8), filled from checkpoints/quantized.safetensors."""
    f = run.quantized_weights
    if not f.is_file():
        raise RunDirError(f"'{run.path}' is a quantized run without '{f.name}' in checkpoints/; quantize its parent again")
    mode = (run.read("derived", required=False) or {}).get("settings", {}).get("mode", "dynamic")
    trainer = build_trainer(recipe, None, callbacks=[], teacher=False)
    sample = next(trainer.data.train.batches(torch.arange(2), 2))[0] if mode == "static" else None
    qmodel = int8.rebuild(trainer.model.eval(), mode, recipe.model.name, sample)
    int8.load(qmodel, mode, f)
    trainer.model = trainer.forward_model = qmodel
    return qmodel.eval(), recipe, trainer
