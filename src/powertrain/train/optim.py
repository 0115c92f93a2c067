"""Optimizers and learning-rate schedules from a recipe's `train` section.

Schedules are closed-form multipliers of the base LR per optimizer step (a `LambdaLR`), so they are
easy to read, to resume, and to test against torch's own schedulers.

What the optimizer updates: `freeze` switches off the gradients of parameters matched by glob
patterns (`train.freeze`), and `param_groups` puts the parameters loaded by `model.init_from` (the
backbone) in their own group at `lr x train.backbone_lr_mult`.

>>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
>>> freeze(net, ["0.*"])
['0.weight', '0.bias']
>>> [len(g["params"]) for g in param_groups(net, TrainConfig())]
[2]
"""
from __future__ import annotations

import math
import warnings
from fnmatch import fnmatchcase
from typing import Optional

import torch

from ..errors import RecipeError
from ..recipe import TrainConfig


def _names_hint(names: list[str]) -> str:
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return f"parameter names are like {shown}"


def freeze(model: torch.nn.Module, patterns: list[str]) -> list[str]:
    """`requires_grad = False` for every parameter whose name matches one of the glob `patterns`
    (fnmatch, case-sensitive); returns the names frozen. A pattern matching nothing, or freezing
    every parameter, is a RecipeError naming `train.freeze`."""
    named = list(model.named_parameters())
    names = [n for n, _ in named]
    for pat in patterns:
        if not any(fnmatchcase(n, pat) for n in names):
            raise RecipeError(f"train.freeze: pattern '{pat}' matches no parameter; {_names_hint(names)}")
    frozen = []
    for name, p in named:
        if any(fnmatchcase(name, pat) for pat in patterns):
            p.requires_grad_(False)
            frozen.append(name)
    if len(frozen) == len(named):
        raise RecipeError(f"train.freeze: {patterns} freezes every parameter, so nothing would train; "
                          f"freeze fewer ({_names_hint(names)})")
    return frozen


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """The trainable parameters as optimizer groups: one at `cfg.lr`, or, with `cfg.backbone_lr_mult`,
    the rest (e.g. a new head) first at `cfg.lr` and the backbone at `cfg.lr x backbone_lr_mult`. The
    backbone is `model.pretrained_names`: the parameters `transfer.load_partial` loaded."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.backbone_lr_mult is None:
        return [{"params": [p for _, p in trainable]}]
    loaded = getattr(model, "pretrained_names", None)
    if not loaded:  # a recipe without model.init_from is refused when parsed; this is e.g. a pruned child's fine-tuning
        warnings.warn("train.backbone_lr_mult is ignored: no parameter of this model was loaded from a pretrained "
                      "run (model.init_from, or powertrain.transfer.load_partial)", stacklevel=2)
        return [{"params": [p for _, p in trainable]}]
    head = [p for n, p in trainable if n not in loaded]
    backbone = [p for n, p in trainable if n in loaded]
    groups = [{"params": head, "name": "head"},
              {"params": backbone, "name": "backbone", "lr": cfg.lr * cfg.backbone_lr_mult}]
    return [g for g in groups if g["params"]]


def build_optimizer(params, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """The recipe's optimizer. `fused`: one fused kernel per update for SGD, Adam and AdamW (the Trainer
    asks for it on CUDA; on the CPU it stays off, so a run's numbers equal a plain loop's)."""
    fuse = {"fused": True} if fused else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, **fuse)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fuse)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fuse)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"train.optimizer: unknown '{cfg.optimizer}'")


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def lr_factor(cfg: TrainConfig, total_steps: int, step: int) -> float:
    """Multiplier of `cfg.lr` for the optimizer update number `step` (0-based)."""
    base, floor = cfg.lr, cfg.min_lr / cfg.lr
    if cfg.schedule == "constant":
        f = 1.0
    elif cfg.schedule == "step":
        f = cfg.gamma ** (step // cfg.step_size)
    elif cfg.schedule == "cosine":
        f = _cos(1.0, floor, min(step, total_steps) / total_steps)
    elif cfg.schedule == "cosine_restarts":
        t0, mult = cfg.restart_steps, cfg.restart_mult
        if mult == 1:
            t_cur, t_i = step % t0, t0
        else:
            n = int(math.log(step / t0 * (mult - 1) + 1, mult))
            t_cur, t_i = step - t0 * (mult**n - 1) / (mult - 1), t0 * mult**n
        f = _cos(1.0, floor, t_cur / t_i)
    elif cfg.schedule == "onecycle":  # torch's OneCycleLR defaults: div 25, final div 1e4, cosine
        lo, hi = base / 25.0, base
        end1, end2 = cfg.pct_start * total_steps - 1, total_steps - 1
        if step <= end1:
            lr = _cos(lo, hi, step / end1)
        else:
            lr = _cos(hi, lo / 1e4, (step - end1) / (end2 - end1))
        f = lr / base
    else:
        raise ValueError(f"train.schedule: unknown '{cfg.schedule}'")
    if cfg.warmup_steps and step < cfg.warmup_steps:
        f *= (step + 1) / cfg.warmup_steps
    return f


def build_scheduler(optimizer, cfg: TrainConfig, total_steps: int) -> Optional[torch.optim.lr_scheduler.LambdaLR]:
    """None for a constant LR without warmup: nothing then runs per step, as in a plain loop."""
    if cfg.schedule == "constant" and not cfg.warmup_steps:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, total_steps, step))


def schedule_notes(cfg: TrainConfig, total_steps: int) -> list[str]:
    """One line for each part of the schedule that the run is too short to reach (shown when training starts):
    a warmup longer than the run (the learning rate never reaches train.lr: its highest value is given), a
    step decay or a cosine restart that never comes.

    >>> cfg = TrainConfig(lr=3e-3, warmup_steps=100, schedule="cosine")
    >>> schedule_notes(cfg, 60)[0]  # doctest: +ELLIPSIS
    'train.warmup_steps=100 is longer than the run (60 steps): the learning rate peaks at 0.000491, 16% of train.lr=0.003...'
    """
    notes = []
    if total_steps <= 0:
        return notes
    if cfg.warmup_steps > total_steps:
        n = min(total_steps, 10_000)
        steps = sorted({round(i * (total_steps - 1) / max(n - 1, 1)) for i in range(n)})
        peak = max(lr_factor(cfg, total_steps, k) for k in steps) * cfg.lr
        notes.append(f"train.warmup_steps={cfg.warmup_steps} is longer than the run ({total_steps} steps): the "
                     f"learning rate peaks at {peak:.3g}, {peak / cfg.lr:.0%} of train.lr={cfg.lr:g}; lower "
                     f"train.warmup_steps or train longer")
    if cfg.schedule == "step" and cfg.step_size >= total_steps:
        notes.append(f"train.schedule=step: train.step_size={cfg.step_size} is not shorter than the run "
                     f"({total_steps} steps): the learning rate never decays; lower train.step_size")
    if cfg.schedule == "cosine_restarts" and cfg.restart_steps >= total_steps:
        notes.append(f"train.schedule=cosine_restarts: train.restart_steps={cfg.restart_steps} is not shorter than "
                     f"the run ({total_steps} steps): no restart comes; lower train.restart_steps")
    return notes
