"""Single, DDP and FSDP as one object with the few verbs the engine needs; the engine never branches
on which one it has.

    wrap(model)                the module the forward pass calls (DDP/FSDP around the model; compiled)
    batches(split, order, n)   this rank's share of each global batch
    local(n)                   samples of a global batch of n that this rank trains on
    step(fn, batch)            one optimizer step, with a job's gradient weighting; its loss on the device
    sum_losses(losses)         the steps' losses as the job's (one all-reduce per log line)
    eval_samples(batch)        samples of an evaluation batch that count on this rank
    reduce(values)             sums over ranks
    save / load / save_best / load_best   checkpoints (rank 0 writes; FSDP: every rank its shards)
    gather_rng / restore_rng   every rank's RNG stream in the checkpoint

`make(strategy_name)` picks one from `train.strategy` and the torchrun environment (distributed.setup).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..run import checkpoint
from . import distributed, sharded
from .distributed import Dist



def compiled(model: nn.Module, compile: bool | str) -> nn.Module:
    """train.compile: False -> the model; True -> torch.compile's default mode; a string -> that mode
    ('reduce-overhead': CUDA graphs replay each step's kernels in one launch)."""
    if not compile:
        return model
    return torch.compile(model) if compile is True else torch.compile(model, mode=compile)

class Single:
    """One process: everything as a plain PyTorch loop does it."""

    def __init__(self, dist: Dist = distributed.SINGLE):
        self.dist = dist

    def wrap(self, model: nn.Module, compile: bool | str, device: torch.device, precision: str, seed: int) -> Callable:
        return compiled(model, compile)

    def share_path(self, path: Optional[Path]) -> Optional[Path]:
        return path

    def batches(self, split, order: torch.Tensor, batch_size: int, start: int = 0):
        return split.batches(order, batch_size, start)

    def local(self, n: int) -> int:
        return n

    def step(self, fn: Callable[[tuple], torch.Tensor], batch: tuple) -> torch.Tensor:
        return fn(batch)

    def sum_losses(self, losses: torch.Tensor) -> torch.Tensor:
        """Per-step losses as the job's (identity in one process)."""
        return losses

    def eval_samples(self, batch: tuple) -> int:
        return len(batch[0])

    def reduce(self, values: list[float], device: torch.device) -> list[float]:
        return list(values)

    def on_main(self, fn: Callable[[], Any]) -> Any:
        return fn()

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, folder: Path, model: nn.Module, optimizer, state: dict) -> Path:
        return checkpoint.save(folder, model, {**state, "optimizer": optimizer.state_dict()})

    def load(self, folder: Path, model: nn.Module, optimizer, device: torch.device) -> dict:
        state = checkpoint.load(folder, model, device)
        if state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        return state

    def save_best(self, path: Path, model: nn.Module) -> None:
        checkpoint.save_weights(model, path)

    def load_best(self, path: Path, model: nn.Module, device: torch.device) -> None:
        checkpoint.load_weights(model, path, device)

    def gather_rng(self) -> dict:
        return {"rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def restore_rng(self, state: dict, seed: int, step: int) -> None:
        torch.set_rng_state(state["rng_cpu"].cpu())
        if state.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])


class DDP(Single):
    """A job: each rank trains on its contiguous share of every global batch; its gradient is weighted
    so that DDP's average is the gradient of the global batch's mean loss (see distributed.py); rank 0
    writes the run directory and its checkpoints."""

    def __init__(self, dist: Dist):
        super().__init__(dist)
        self._grad_scale, self._shares = 1.0, (0, 0)
        self._wrapped: Optional[nn.Module] = None
        self._eager: Optional[nn.Module] = None  # the DDP/FSDP module without compile: evaluation runs it
        self._model: Optional[nn.Module] = None

    def _wrap_model(self, model: nn.Module, device: torch.device, precision: str) -> nn.Module:
        return distributed.wrap_ddp(model, device)

    def wrap(self, model, compile, device, precision, seed):
        distributed.seed_rank(seed, self.dist.rank)  # rank r > 0 gets its own RNG stream (dropout, augmentation)
        wrapped = self._wrap_model(model, device, precision)
        self._model, self._eager, self._wrapped = model, wrapped, compiled(wrapped, compile)
        return self._forward

    def _forward(self, x):
        out = (self._wrapped if self._model.training else self._eager)(x)  # evaluation eager: no second compile
        return out if self._grad_scale == 1.0 else distributed.scale_grad(out, self._grad_scale)

    def share_path(self, path):
        shared = distributed.broadcast_object(str(path) if path is not None else None)
        return Path(shared) if shared else None

    def batches(self, split, order, batch_size, start=0):
        for batch, n_local, n in distributed.shard_batches(split, order, batch_size, start, self.dist.rank,
                                                           self.dist.world_size):
            self._shares = (n_local, n)
            yield batch

    def local(self, n):
        lo, hi = distributed.shard_bounds(n, self.dist.rank, self.dist.world_size)
        return hi - lo

    def step(self, fn, batch):
        n_local, n = self._shares
        self._grad_scale = n_local * self.dist.world_size / n  # DDP/FSDP average: this makes it the global mean
        try:
            loss = fn(batch)
        finally:
            self._grad_scale = 1.0
        return loss.detach().to(torch.float64) * (n_local / n)  # this rank's part: `sum_losses` adds the ranks'

    def sum_losses(self, losses):
        losses = losses.clone()
        torch.distributed.all_reduce(losses)  # one collective per log line, not one per step
        return losses

    def eval_samples(self, batch):
        return self._shares[0]  # 0: a stand-in sample of an empty share

    def reduce(self, values, device):
        return distributed.all_reduce_sum(values, device)

    def on_main(self, fn):
        return distributed.on_main(fn)

    def save(self, folder, model, optimizer, state):
        state = {**state, "optimizer": optimizer.state_dict()}
        if self.dist.is_main:
            checkpoint.save(folder, model, state)
        return folder

    def load(self, folder, model, optimizer, device):
        state = distributed.on_main(lambda: checkpoint.load(folder, model, device, map_location="cpu"))
        distributed.broadcast_module(model)
        optimizer.load_state_dict(state["optimizer"])
        return state

    def save_best(self, path, model):
        if self.dist.is_main:
            checkpoint.save_weights(model, path)

    def load_best(self, path, model, device):
        if self.dist.is_main:
            checkpoint.load_weights(model, path, device)
        distributed.broadcast_module(model)

    def gather_rng(self):
        cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return {**super().gather_rng(), "rng_cpu_ranks": distributed.gather_objects(torch.get_rng_state()),
                "rng_cuda_ranks": distributed.gather_objects(cuda), "world_size": self.dist.world_size}

    def restore_rng(self, state, seed, step):
        d, ranks, cuda = self.dist, state.get("rng_cpu_ranks"), state.get("rng_cuda_ranks")
        if ranks and len(ranks) == d.world_size:  # the same world: each rank's own stream
            torch.set_rng_state(ranks[d.rank].cpu())
            if cuda and cuda[d.rank] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(cuda[d.rank].cpu())
        elif d.is_main:
            super().restore_rng(state, seed, step)
        else:  # another world size: ranks > 0 start fresh streams
            distributed.seed_rank(seed + step, d.rank)


class FSDP(DDP):
    """FSDP2 (`fully_shard` per transformer block): every rank writes and reads its own shards of model
    and optimizer (DCP); best weights are gathered to rank 0."""

    def _wrap_model(self, model, device, precision):
        return distributed.wrap_fsdp(model, device, precision)

    def save(self, folder, model, optimizer, state):
        return sharded.save_sharded(folder, model, optimizer, {**state, "optimizer": None}, self.dist.is_main)

    def load(self, folder, model, optimizer, device):
        if not checkpoint.is_sharded(folder):  # a checkpoint of a single process or DDP run
            return super().load(folder, model, optimizer, device)
        return sharded.load_sharded(folder, model, optimizer, self.dist.is_main)

    def save_best(self, path, model):
        sharded.save_full_weights(model, path, self.dist.is_main)

    def load_best(self, path, model, device):
        sharded.load_full_weights(model, path, self.dist.is_main)


def make(name: str = "auto") -> Single:
    """The strategy for `train.strategy` in this environment (initialises the process group if needed)."""
    d = distributed.setup(name)
    return {"single": Single, "ddp": DDP, "fsdp": FSDP}[d.strategy](d) if d.enabled else Single(d)
