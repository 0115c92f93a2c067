"""Reading a trained run back: its Trainer (final weights or a named checkpoint), its model in any
form (fp32, pruned, int8), and its metrics recomputed. Every stage after training (eval, export,
predict, generate, explain, audit, derived runs) loads a run through here.

A run's model takes standardised inputs; `Units` is the one definition of what the data loader did to the
dataset's own units (pixels 0-255 of image files, raw feature values of a table) and of how a regression's
outputs map back to the target's units, so that `predict` and an exported ONNX model (`RawModel`, the
preprocessing baked into the graph) agree.

>>> model, recipe, trainer = load_model("runs/digits-mlp")  # doctest: +SKIP
"""
from __future__ import annotations

import math
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


class Units:
    """The run's preprocessing, from its DataMeta: model input = (x * scale - mean) / std, with mean and std
    broadcast per feature, per channel or as one number; a regression's output * out_std + out_mean is a
    value in the target's units. Token inputs (language models, text) pass as they are.

    >>> from powertrain.data import DataMeta
    >>> u = Units(DataMeta((2,), "regression", extra={"standardize": {"mean": [1, 2], "std": [2, 4]},
    ...                                               "target_mean": 10.0, "target_std": 2.0}))
    >>> u.to_model(torch.tensor([[3.0, 6.0]])).tolist(), u.to_target(torch.tensor([[1.0]])).tolist()
    ([[1.0, 1.0]], [[12.0]])
    """

    def __init__(self, meta):
        shape = tuple(meta.input_shape)
        self.tokens = meta.input_dtype != torch.float32
        self.scale, self.mean, self.std, self.what = 1.0, None, None, "the model's own inputs (no preprocessing)"
        st, norm = meta.extra.get("standardize"), meta.normalization
        if self.tokens:
            self.what = "token ids"
        elif st:
            self.mean, self.std = self._shaped(st["mean"], shape), self._shaped(st["std"], shape)
            self.what = "raw feature values (standardised inside with the train split's mean and std)"
        elif norm:  # image files: uint8 pixels, (x / 255 - mean) / std per channel
            self.scale = 1 / 255
            self.mean, self.std = self._shaped(norm["mean"], shape), self._shaped(norm["std"], shape)
            self.what = "pixels 0-255 (inside: (x / 255 - mean) / std per channel, the train split's)"
        self.out_mean = float(meta.extra.get("target_mean", 0.0)) if meta.task == "regression" else 0.0
        self.out_std = float(meta.extra.get("target_std", 1.0)) if meta.task == "regression" else 1.0

    @staticmethod
    def _shaped(values, shape: tuple) -> torch.Tensor:
        t = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
        if t.numel() == 1:
            return t.reshape(())
        if t.numel() == math.prod(shape):
            return t.reshape(1, *shape)
        if shape and t.numel() == shape[0]:  # per channel
            return t.reshape(1, shape[0], *([1] * (len(shape) - 1)))
        raise RunDirError(f"the run's standardisation has {t.numel()} values, which fit no part of its input shape "
                          f"{shape}: its data section changed since training")

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs in the dataset's own units -> the model's inputs."""
        if self.tokens or self.mean is None:
            return x if self.tokens else x.float()
        return (x.float() * self.scale - self.mean) / self.std

    def to_raw(self, x: torch.Tensor) -> torch.Tensor:
        """The model's inputs -> the dataset's own units (the inverse of `to_model`)."""
        if self.tokens or self.mean is None:
            return x
        return (x * self.std + self.mean) / self.scale

    def to_target(self, out: torch.Tensor) -> torch.Tensor:
        """A regression's outputs -> values in the target's units (other tasks: unchanged)."""
        return out * self.out_std + self.out_mean if (self.out_std, self.out_mean) != (1.0, 0.0) else out


class RawModel(nn.Module):
    """`model` taking inputs in the dataset's own units, its preprocessing inside (for ONNX export): a
    regression's outputs come out in the target's units; other outputs are the model's (logits)."""

    def __init__(self, model: nn.Module, units: Units):
        super().__init__()
        self.model, self.tokens = model, units.tokens
        self.scale = units.scale
        self.register_buffer("mean", units.mean if units.mean is not None else torch.zeros(()))
        self.register_buffer("std", units.std if units.std is not None else torch.ones(()))
        self.out_mean, self.out_std = units.out_mean, units.out_std

    def forward(self, x):
        if not self.tokens:
            x = (x.float() * self.scale - self.mean) / self.std
        out = self.model(x)
        if (self.out_std, self.out_mean) != (1.0, 0.0):
            out = out * self.out_std + self.out_mean
        return out


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
    trainer.strategy.load_best(Path(weights) if Path(weights).suffix == ".safetensors" else Path(weights) / "model.safetensors",
                               trainer.model, trainer.device)
    return trainer


def load_model(run_dir: str | Path, checkpoint: Optional[str] = None) -> tuple[nn.Module, Recipe, Trainer]:
    """Any run's final model (or the named checkpoint's, e.g. 'step-00000040'), in eval mode: fp32 (trained or
    pruned) on the run's device, or int8 (quantized) on the CPU. Returns (model, recipe, trainer), the
    trainer holding the run's data.

    >>> model, recipe, trainer = load_model("runs/digits-mlp-int8")  # doctest: +SKIP
    """
    run = RunDir.open(run_dir)
    if run.kind == "quantized" and not checkpoint:
        return load_quantized(run, run.recipe())
    trainer = load_trainer(run, checkpoint)
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
