"""Optimizers and learning-rate schedules from a recipe's `train` section.

Schedules are closed-form multipliers of the base LR per optimizer step (a `LambdaLR`), so they are
easy to read, to resume, and to test against torch's own schedulers.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .recipe import TrainConfig


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
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
