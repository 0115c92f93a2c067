"""Differentially private training: DP-SGD (Abadi et al. 2016) through Opacus, as a Trainer subclass.
The unchanged `fit` trains; what changes is the step and the batches:

    batch      a Poisson sample of the train split: each sample joins independently with rate
               q = batch_size / train samples (drawn from the checkpointed torch RNG)
    step       per-sample gradients (Opacus's GradSampleModule hooks), each clipped to norm C =
               max_grad_norm, summed, plus Gaussian noise of std sigma * C, divided by the expected
               batch size (Opacus's DPOptimizer), then the recipe's optimizer and schedule
    accountant Opacus's RDP or PRV accountant turns (sigma, q, steps) into the epsilon spent at delta

`train.privacy.epsilon` calibrates sigma (`opacus.accountants.utils.get_noise_multiplier`) for the
run's planned steps; `noise_multiplier` sets it directly. The epsilon spent is logged per epoch to
metrics.jsonl (`{"step", "epoch", "privacy": {...}}`), shown in the progress line, and stated on the
bill's "privacy" block with delta, the accountant, q, sigma and C. The accountant's history, sigma and
every step's batch size are in the checkpoint: a resumed run ends with the same epsilon and weights.

Layers Opacus cannot train as they are (BatchNorm, nn.GRU/LSTM, MultiheadAttention) are replaced by
Opacus's fixer (GroupNorm, DPGRU/DPLSTM, DPMultiheadAttention) with a note naming each change; a layer
it cannot fix is refused in one line. One process only: DDP and FSDP are refused.

>>> from powertrain import train
>>> run = train("digits-mlp", ["train.privacy.epsilon=3", "train.epochs=5"])  # doctest: +SKIP
>>> run.bill["privacy"]["epsilon"] <= 3  # doctest: +SKIP
True
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from typing import Optional

import torch
from torch import nn

from .callbacks import Callback
from .engine import Trainer
from ..errors import RecipeError, need_extra
from ..recipe import PrivacyConfig, TrainConfig
from ..recipe.schema import check_privacy

ACCOUNTANTS = {"rdp": "Renyi DP (Mironov 2017; Opacus RDPAccountant), converted to (epsilon, delta)",
               "prv": "privacy loss random variables (Gopi et al. 2021; Opacus PRVAccountant), an upper bound"}


def opacus():
    """The opacus package, or a one-line MissingExtra naming the extra to install."""
    return need_extra("opacus", "trust", "train.privacy (DP-SGD)")


# ---------------------------------------------------------------- the model: Opacus's fixes, or a refusal
def _describe(m: nn.Module) -> str:
    if isinstance(m, nn.GroupNorm):
        return f"GroupNorm({m.num_groups} groups of {m.num_channels // m.num_groups} channels)"
    return type(m).__name__


def private_model(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """`model` made trainable with per-sample gradients the way Opacus recommends (ModuleValidator.fix:
    BatchNorm -> GroupNorm, nn.GRU/LSTM -> DPGRU/DPLSTM, ...), and a note per replaced layer. A layer
    that still cannot be trained privately is refused in one line naming it."""
    opacus()
    from opacus.grad_sample import GradSampleModule
    from opacus.validators import ModuleValidator

    was = model.training
    model.train()  # the validator also checks the training mode
    notes = []
    if ModuleValidator.validate(model, strict=False):
        before = {name: m for name, m in model.named_modules()}
        with torch.random.fork_rng(devices=[]):  # a fixer that builds layers draws no numbers from the run's stream
            model = ModuleValidator.fix(model)
        changed = [(n, m) for n, m in model.named_modules() if n in before and type(m) is not type(before[n])]
        for name, m in changed:
            if not any(name.startswith(other + ".") for other, _ in changed if other):
                notes.append(f"layer '{name or 'model'}': {type(before[name]).__name__} -> {_describe(m)}")
    for name, m in model.named_modules():
        validator = ModuleValidator.VALIDATORS.get(type(m))
        errors = validator(m) if validator is not None and any(p.requires_grad for p in m.parameters(recurse=False)) else []
        if errors:
            raise RecipeError(f"train.privacy: layer '{name}' ({type(m).__name__}) cannot be trained with per-sample "
                              f"gradients and Opacus has no replacement for it ({str(errors[0]).split('.')[0]}); "
                              f"use a model without it, or train without train.privacy")
    for name, m in model.named_modules():
        trainable = any(p.requires_grad for p in m.parameters(recurse=False))
        buffers = [b for b, t in m.named_buffers(recurse=False) if t is not None]
        if trainable and buffers:
            raise RecipeError(f"train.privacy: layer '{name or 'model'}' ({type(m).__name__}) has trainable weights and "
                              f"buffers ({', '.join(buffers)}), which Opacus refuses (a buffer may carry data past the "
                              f"clipping); use a model without it, or train without train.privacy")
    GradSampleModule.validate(model, strict=True)  # Opacus's own check, after ours named the layer
    model.train(was)
    return model, notes


# ---------------------------------------------------------------- Poisson batches
class PoissonSplit:
    """A train split whose batches are Poisson samples: each of its `len(split)` samples joins each batch
    independently with probability `rate`, so a batch's size varies (it may be empty). An epoch is
    ceil(n / batch_size) batches, as without privacy. Membership is drawn from the global torch RNG
    when a batch is asked for, after the previous step's checkpoint: a resumed run draws the same."""

    def __init__(self, split, rate: float):
        self.split, self.rate = split, float(rate)

    def __len__(self) -> int:
        return len(self.split)

    def to(self, device) -> "PoissonSplit":
        return PoissonSplit(self.split.to(device), self.rate)

    @property
    def tensors(self):
        return self.split.tensors

    def batches(self, order: torch.Tensor, batch_size: int, start: int = 0):
        n = len(self.split)
        for _ in range(start, math.ceil(n / batch_size)):
            idx = torch.nonzero(torch.rand(n) < self.rate).flatten()
            yield next(self.split.batches(idx, len(idx))) if len(idx) else self.empty_batch()

    def empty_batch(self) -> tuple:
        one = next(self.split.batches(torch.zeros(1, dtype=torch.long), 1))
        return tuple(t[:0] for t in one)


def unwrap(split):
    """The split a PoissonSplit samples from (any other split as it is)."""
    return split.split if isinstance(split, PoissonSplit) else split


# ---------------------------------------------------------------- the trainer
class _EpsilonLog(Callback):
    """Logs the epsilon spent at the end of every epoch (and at the last step) to metrics.jsonl, and puts
    it in the progress line. Written before the step's checkpoint, so a resumed run writes each once."""

    def on_step_end(self, trainer, loss: float) -> None:
        if trainer.step % trainer.steps_per_epoch == 0 or trainer.step == trainer.total_steps:
            eps = trainer.epsilon()
            trainer.progress_note = f"ε {eps:.3g}"
            trainer.log({"step": trainer.step, "epoch": trainer.epoch,
                         "privacy": {"epsilon": eps, "delta": trainer.privacy.delta,
                                     "accountant": trainer.privacy.accountant}})


class PrivateTrainer(Trainer):
    """A Trainer that trains with DP-SGD (Opacus) and accounts the privacy it spends.

    >>> t = PrivateTrainer(model, data, TrainConfig(epochs=5, privacy={"epsilon": 3.0}))  # doctest: +SKIP
    >>> t.fit().bill()["privacy"]["epsilon"] <= 3.0  # doctest: +SKIP
    True
    """

    def __init__(self, model: nn.Module, data, config: Optional[TrainConfig] = None, **trainer_kwargs):
        config = config or TrainConfig()
        if config.privacy is None:
            raise RecipeError("train.privacy: not set; a PrivateTrainer needs e.g. train.privacy.epsilon=8")
        opacus()
        check_privacy(config)
        self.privacy: PrivacyConfig = config.privacy
        model, self.model_changes = private_model(model)
        self._batch_sizes: list[int] = []  # samples in each step's Poisson batch, over resumes
        self._flops_per_sample: Optional[int] = None  # of a private train step (counted at the first fit)
        super().__init__(model, data, config, **trainer_kwargs)
        if self.dist.enabled:
            raise RecipeError(f"train.privacy: DP-SGD runs in one process here, and this job has {self.dist.world_size}; "
                              f"train a private run without torchrun (no --nproc)")
        n = len(self.data.train)
        self.sample_rate = min(1.0, self.cfg.batch_size / n)
        self.expected_batch_size = self.cfg.batch_size
        self._noise_multiplier: Optional[float] = self.privacy.noise_multiplier
        self._calibrated_steps: Optional[int] = None  # the steps sigma was calibrated for (train.privacy.epsilon)
        from opacus.accountants import create_accountant

        self.accountant = create_accountant(self.privacy.accountant)
        self.data = type(self.data)(PoissonSplit(self.data.train, self.sample_rate), self.data.val, self.data.test,
                                    self.data.meta)
        self.noise_multiplier  # calibrated now: an epsilon out of reach is refused before anything trains
        self.progress_note = ""
        self.callbacks.append(_EpsilonLog())
        self._gsm = None
        if self.model_changes and self.dist.is_main and trainer_kwargs.get("run_dir") is not None:
            for note in self.model_changes:
                print(f"powertrain: note: train.privacy: {note} (Opacus's fix: the layer trains with "
                      f"per-sample gradients)", file=sys.stderr)

    # -- sigma and epsilon ---------------------------------------------------------------------
    @property
    def noise_multiplier(self) -> float:
        """sigma: given, restored from a checkpoint, or calibrated (at construction) to reach
        train.privacy.epsilon after the run's planned steps."""
        if self._noise_multiplier is None:
            from opacus.accountants.utils import get_noise_multiplier

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # see epsilon()
                    self._noise_multiplier = float(get_noise_multiplier(
                        target_epsilon=self.privacy.epsilon, target_delta=self.privacy.delta,
                        sample_rate=self.sample_rate, steps=self.total_steps, accountant=self.privacy.accountant,
                        epsilon_tolerance=0.01))
                self._calibrated_steps = self.total_steps
            except ValueError as e:
                raise RecipeError(f"train.privacy.epsilon: {self.privacy.epsilon:g} cannot be reached in "
                                  f"{self.total_steps} steps at sampling rate {self.sample_rate:.3g} ({e}); raise "
                                  f"epsilon or train.batch_size, or train fewer steps") from None
        return self._noise_multiplier

    def epsilon(self) -> float:
        """The epsilon spent so far at train.privacy.delta (0 before the first step)."""
        if not len(self.accountant):
            return 0.0
        with warnings.catch_warnings():  # RDP: "optimal order is the largest alpha" at large epsilon; still a bound
            warnings.simplefilter("ignore", UserWarning)
            return float(self.accountant.get_epsilon(delta=self.privacy.delta))

    # -- Opacus around fit: hooks and the DP optimizer only while training ------------------------
    def fit(self) -> "PrivateTrainer":
        with warnings.catch_warnings():
            # Opacus's full backward hooks fire on layers whose inputs need no gradient (the first layer):
            # expected, and PyTorch warns about it at every step
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            self._attach()
            try:
                return super().fit()
            finally:
                self._detach()

    def _attach(self) -> None:
        from opacus.grad_sample import GradSampleModule
        from opacus.optimizers import DPOptimizer

        self._gsm = GradSampleModule(self.model, loss_reduction="mean")  # hooks on the model's layers
        self._plain = (self.forward_model, self.optimizer)
        self.forward_model = self._gsm
        self.optimizer = DPOptimizer(self.optimizer, noise_multiplier=self.noise_multiplier,
                                     max_grad_norm=self.privacy.max_grad_norm,
                                     expected_batch_size=self.expected_batch_size, loss_reduction="mean")
        self.optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))
        if self._flops_per_sample is None:
            self._count_private_flops()

    def _detach(self) -> None:
        if self._gsm is not None:
            self.optimizer.zero_grad(set_to_none=True)
            self._gsm.cleanup()  # hooks removed, grad_sample attributes dropped: the model is a plain module again
            self._gsm = None
            self.forward_model, self.optimizer = self._plain

    def _count_private_flops(self) -> None:
        """FLOPs of one private step per sample (forward, backward with per-sample gradients, clipping and
        the clipped sum), counted once on a batch of the expected size; RNG and gradients left as found."""
        from ..measure import count_flops

        split = unwrap(self.data.train)
        k = min(self.expected_batch_size, len(split))
        batch = next(split.batches(torch.arange(k), k))

        def step() -> None:
            with self._autocast():
                loss = self.compute_loss(batch, self.forward(batch))
            loss.backward()
            self.optimizer.clip_and_accumulate()

        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            self.optimizer.zero_grad(set_to_none=True)
            count = count_flops(step)[1].total
            self.optimizer.zero_grad(set_to_none=True)
        self._flops_per_sample = int(round(count / k))

    # -- the step --------------------------------------------------------------------------------
    def train_step(self, batch: tuple) -> torch.Tensor:
        """One DP-SGD update over a Poisson batch (in `accumulate` chunks: each chunk's clipped per-sample
        gradients are summed, noise is added once)."""
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        n = len(batch[0])
        self._batch_sizes.append(n)
        t0 = time.perf_counter()
        chunks = [c for c in zip(*(t.tensor_split(self.cfg.accumulate) for t in batch)) if len(c[0])] if n else []
        total = torch.zeros((), device=self.device)
        if not chunks:  # an empty Poisson batch: noise only, as Opacus does
            for p in opt.params:
                p.grad_sample = p.new_zeros((0, *p.shape))
        for i, chunk in enumerate(chunks):
            with self._autocast():
                loss = self.compute_loss(chunk, self.forward(chunk))
            loss.backward()
            total = total + loss.detach().float() * (len(chunk[0]) / n)
            if i < len(chunks) - 1:  # clip and keep this chunk's per-sample gradients; no noise, no update yet
                opt.signal_skip_step(True)
                opt.step()
                opt.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        opt.step()  # clip, sum, add noise, divide by the expected batch size, account, update
        if self.scheduler is not None:
            self.scheduler.step()
        self.phase_s["forward_backward"] += t1 - t0
        self.phase_s["optimizer"] += time.perf_counter() - t1
        return total

    # -- what was trained: samples and FLOPs of the Poisson batches ------------------------------------
    def samples_trained(self, start: int = 0, end: Optional[int] = None) -> int:
        return sum(self._batch_sizes[start:self.step if end is None else end])

    def train_flops(self, start: int, end: int) -> int:
        if self._flops_per_sample is None:  # before the first fit (construction): no step taken yet
            return super().train_flops(start, end)
        return self.samples_trained(start, end) * self._flops_per_sample

    # -- checkpoint state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        acc = self.accountant
        return {**super().state_dict(),
                "privacy": {"noise_multiplier": self.noise_multiplier, "calibrated_steps": self._calibrated_steps,
                            "batch_sizes": list(self._batch_sizes),
                            "flops_per_sample": self._flops_per_sample,
                            "accountant": {"mechanism": acc.mechanism(), "history": [list(h) for h in acc.history]}}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        p = state.get("privacy")
        if p is None:
            raise RecipeError("train.privacy: this checkpoint was written without privacy; a private run cannot "
                              "continue a run that was not private: train a new run")
        self._noise_multiplier = float(p["noise_multiplier"])
        self._calibrated_steps = p.get("calibrated_steps")
        self._batch_sizes = [int(n) for n in p["batch_sizes"]]
        self._flops_per_sample = p["flops_per_sample"]
        self.accountant.history = [tuple(h) for h in p["accountant"]["history"]]

    # -- the bill ------------------------------------------------------------------------------------
    def bill(self) -> dict:
        """The Trainer's bill with a "privacy" block: the guarantee and what it cost."""
        bill = super().bill()
        if not self.dist.is_main:
            return bill
        if self._flops_per_sample is not None:
            bill["flops"]["per_step_train"] = self._flops_per_sample * self.expected_batch_size
        bill["privacy"] = self.privacy_report(bill)
        return bill

    def privacy_report(self, bill: Optional[dict] = None) -> dict:
        from opacus.version import __version__ as opacus_version

        eps, target = self.epsilon(), self.privacy.epsilon
        plain = self._step_flops.get(self.batch_size_at(0), 0) / max(self.batch_size_at(0), 1)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        notes = []
        if target is not None and eps > target * 1.01:
            notes.append(f"epsilon spent ({eps:.3g}) exceeds the target ({target:g}): the run trained past the "
                         f"{self._calibrated_steps} steps its noise was calibrated for (a resume that extended it)")
        n = len(unwrap(self.data.train))
        if self.privacy.delta >= 1.0 / n:
            notes.append(f"delta {self.privacy.delta:g} is not below 1 / train samples ({1 / n:.3g}): a guarantee "
                         f"this weak allows releasing a few samples outright; lower train.privacy.delta")
        return {
            "mechanism": f"DP-SGD (Opacus {opacus_version}): per-sample clipping, Gaussian noise, Poisson sampling",
            "epsilon": eps, "delta": self.privacy.delta, "target_epsilon": target,
            "accountant": self.privacy.accountant, "accountant_detail": ACCOUNTANTS[self.privacy.accountant],
            "noise_multiplier": self.noise_multiplier, "calibrated_steps": self._calibrated_steps,
            "max_grad_norm": self.privacy.max_grad_norm,
            "sample_rate": self.sample_rate, "expected_batch_size": self.expected_batch_size,
            "steps": self.step, "train_samples": n, "samples_drawn": self.samples_trained(),
            "model_changes": list(self.model_changes),
            "cost": {"flops_per_sample_train": self._flops_per_sample, "flops_per_sample_train_without_privacy": plain or None,
                     "flops_ratio": self._flops_per_sample / plain if self._flops_per_sample and plain else None,
                     "per_sample_grad_bytes": self.expected_batch_size * trainable * 4,
                     "note": "per-sample gradients: their FLOPs are counted in flops.train_total; they hold "
                             "expected_batch_size x trainable params floats at once; time, energy and peak memory "
                             "against the same recipe without train.privacy: `powertrain compare RUN_A RUN_B`"},
            "notes": notes,
        }


__all__ = ["PrivateTrainer", "PoissonSplit", "private_model", "check_privacy", "unwrap"]
