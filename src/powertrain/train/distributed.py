"""Many processes, one run: the strategy from the torchrun environment, global-batch sharding, and the
collectives that make N processes compute what one process computes.

    powertrain train gpt-stdlib --nproc 8                        # one node, 8 GPUs (launches torchrun)
    torchrun --nproc-per-node 8 -m powertrain train gpt-stdlib   # the same, by hand

`train.strategy`: `auto` (DDP when torchrun started more than one process, else `single`), `single`,
`ddp` (torch.nn.parallel.DistributedDataParallel) or `fsdp` (FSDP2, `fully_shard` per transformer
block). gloo on CPU, nccl on CUDA. Outside torchrun, `ddp` and `fsdp` run as a world of one.

Global batch: `train.batch_size` is the batch of one optimizer step across all ranks. Every rank walks
the same epoch permutation (a function of seed and epoch) and takes its contiguous share of each global
batch (`shard_bounds`; shares differ by at most one sample when the world does not divide the batch).
A rank's gradient is scaled by `n_rank * world / n` at the model's outputs, so the average that DDP and
FSDP take is the gradient of the global batch's mean loss, whatever the shares; a rank whose share is
empty (a last batch smaller than the world) steps on one sample with weight 0, so that every rank
runs the same collectives. Losses and metrics are reduced across ranks; only rank 0 logs and writes
the run directory (FSDP's sharded checkpoints excepted: each rank writes its own shard there).

>>> shard_bounds(10, 0, 3), shard_bounds(10, 1, 3), shard_bounds(10, 2, 3)
((0, 4), (4, 7), (7, 10))
>>> Dist("single").is_main, Dist("single").world_size
(True, 1)
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..errors import RecipeError

STRATEGIES = ("auto", "single", "ddp", "fsdp")
_owned_group = False  # True when powertrain initialised the default process group (it destroys it too)


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the job. `node_rank` is torchrun's GROUP_RANK."""

    strategy: str  # "single", "ddp" or "fsdp"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0

    @property
    def enabled(self) -> bool:
        """A process group is in use (ddp or fsdp, even with a world of one)."""
        return self.strategy != "single"

    @property
    def is_main(self) -> bool:
        """Rank 0: logs, prints and writes the run directory."""
        return self.rank == 0

    @property
    def reads_node_counters(self) -> bool:
        """Local rank 0 reads the node's energy counters (RAPL, NVML) for every rank on its node."""
        return self.local_rank == 0


SINGLE = Dist("single")


def torchrun_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def elastic_restart_count() -> int:
    """How often torchrun restarted the workers of this job (0 on the first attempt or without torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def init_process_group(world_of_one: bool = False) -> bool:
    """Join torchrun's process group (env:// rendezvous), or make a world of one when `world_of_one`.
    Returns whether a process group exists afterwards. gloo for CPU tensors, and nccl for CUDA tensors
    where CUDA is available (each process then uses GPU LOCAL_RANK)."""
    global _owned_group
    if dist.is_initialized():
        return True
    cuda = torch.cuda.is_available()
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    if "RANK" in os.environ and "MASTER_ADDR" in os.environ:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda and local < torch.cuda.device_count():  # a CPU job may start more ranks than there are GPUs
            torch.cuda.set_device(local)
        # torchrun's store outlives a restart of the workers: without a prefix per attempt, the restarted
        # ranks read each other's addresses of the attempt before (dead processes) and fail to connect
        store, rank, world = next(dist.rendezvous("env://"))
        store = dist.PrefixStore(f"powertrain/attempt-{elastic_restart_count()}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    elif world_of_one:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    else:
        return False
    _owned_group = True
    atexit.register(shutdown)
    return True


def setup(strategy: str = "auto") -> Dist:
    """The Dist for `train.strategy` in this environment, initialising the process group if needed.

    >>> setup("single").strategy
    'single'
    """
    if strategy not in STRATEGIES:
        raise RecipeError(f"train.strategy: '{strategy}' is not a strategy; expected one of {', '.join(STRATEGIES)}")
    world = dist.get_world_size() if dist.is_initialized() else torchrun_world_size()
    if strategy == "auto":
        strategy = "ddp" if world > 1 else "single"
    if strategy == "single":
        if world > 1:
            raise RecipeError(f"train.strategy: single, but this job has {world} processes; set train.strategy to "
                              f"auto, ddp or fsdp, or launch one process")
        return SINGLE
    init_process_group(world_of_one=True)
    node_rank = int(os.environ.get("GROUP_RANK", "0"))
    return Dist(strategy, dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                int(os.environ.get("LOCAL_WORLD_SIZE", str(dist.get_world_size()))), node_rank)


def shutdown() -> None:
    """Destroy the process group if powertrain created it (safe to call twice)."""
    global _owned_group
    if _owned_group and dist.is_initialized():
        dist.destroy_process_group()
    _owned_group = False


def finish_job() -> None:
    """The end of a job of several processes: wait for every rank, then take the process group down
    while all are alive (a rank that exits with gloo's threads still up can abort or hang). A process
    group of one is kept: the caller may still use the trained model."""
    if _owned_group and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
        shutdown()


# ---------------------------------------------------------------- collectives on plain Python objects
def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """`obj` of rank `src` on every rank (identity without a process group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 only and return its result on every rank; an exception raised there is
    raised on every rank, so no rank waits forever for a rank that failed."""
    result, error = None, None
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks of a few numbers (float64)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def seed_rank(seed: int, rank: int) -> None:
    """Give rank r > 0 its own RNG stream (dropout, augmentation); rank 0 keeps the single-process one.
    Called after the model is built, so that every rank starts from the same weights."""
    if rank:
        torch.manual_seed(seed * 1_000_003 + 7919 * rank)


# ---------------------------------------------------------------- the global batch, sharded
def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) of rank's share of n samples: contiguous, sizes differ by at most one."""
    q, r = divmod(n, world)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (rank < r)


def shard_batches(split, order: torch.Tensor, batch_size: int, start: int, rank: int, world: int
                  ) -> Iterator[tuple[tuple, int, int]]:
    """(local batch, local samples, global samples) for each global batch of `order` from batch `start`.

    In-memory splits build the global batch and keep this rank's slice: indexing is cheap, and state
    that a split derives from the whole order (a text split's window offset) stays the same as in one
    process. A DataLoader split loads only this rank's samples. An empty share comes back as one
    sample of the batch with local samples 0 (the caller weights it 0)."""
    from ..data import LoaderSplit

    if isinstance(split, LoaderSplit):
        yield from _loader_shards(split, order, batch_size, start, rank, world)
        return
    for batch in split.batches(order, batch_size, start):
        n = len(batch[0])
        lo, hi = shard_bounds(n, rank, world)
        if hi == lo:
            yield tuple(t[:1] for t in batch), 0, n
        else:
            yield tuple(t[lo:hi] for t in batch), hi - lo, n


def _loader_shards(split, order, batch_size, start, rank, world):
    n_total = len(order)
    sizes = [min(batch_size, n_total - k * batch_size) for k in range(start, -(-n_total // batch_size))]
    local = []
    for k, n in enumerate(sizes, start):
        lo, hi = shard_bounds(n, rank, world)
        local.append(order[k * batch_size + lo: k * batch_size + hi])
    full = shard_bounds(batch_size, rank, world)
    per_batch = full[1] - full[0]
    if per_batch == 0:
        raise RecipeError(f"train.batch_size: {batch_size} is smaller than the {world} ranks; use at least one "
                          f"sample per rank")
    loaded = split.batches(torch.cat(local) if local else order[:0], per_batch)
    last = None
    for n in sizes:
        lo, hi = shard_bounds(n, rank, world)
        if hi == lo:  # the share of a short last batch is empty: step on a sample with weight 0
            yield tuple(t[:1] for t in last), 0, n
            continue
        last = next(loaded)
        yield last, hi - lo, n


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by `scale`."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def scale_grad(outputs: Any, scale: float) -> Any:
    """Outputs whose gradient is multiplied by `scale` (tensors inside tuples and lists too)."""
    if isinstance(outputs, torch.Tensor):
        return _ScaleGrad.apply(outputs, scale) if outputs.requires_grad else outputs
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(scale_grad(o, scale) for o in outputs)
    return outputs


# ---------------------------------------------------------------- wrapping the model
BLOCK_TYPES: tuple[type, ...] = ()  # your own block classes, for a model of your own


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of `model`: modules whose class says `shard_unit = True` (the gpt and
    transformer families' Block does), or is listed in BLOCK_TYPES. Each is the unit that activation
    checkpointing recomputes and FSDP shards; the model tells, the strategy imports no model."""
    return [m for m in model.modules() if getattr(type(m), "shard_unit", False) or isinstance(m, BLOCK_TYPES)]


def checkpoint_activations(model: nn.Module) -> int:
    """Activation checkpointing per block: each block's activations are recomputed in backward instead
    of kept. Parameter names do not change. Returns the number of blocks."""
    from torch.distributed._composable import checkpoint

    found = blocks(model)
    if not found:
        raise RecipeError(f"train.activation_checkpointing: model {type(model).__name__} has no transformer blocks "
                          f"to checkpoint; it works for the gpt and transformer models")
    for b in found:
        checkpoint(b)
    return len(found)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def wrap_fsdp(model: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """FSDP2: `fully_shard` each transformer block, then the root (embeddings, head); parameters become
    DTensors sharded across the ranks. Half precisions gather parameters in that dtype and reduce
    gradients in fp32; fp32 (CPU) stays fp32. The module is changed in place and returned."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    found = blocks(model)
    if not found:
        raise RecipeError(f"train.strategy: fsdp shards transformer blocks, and model {type(model).__name__} has "
                          f"none; use train.strategy=ddp for it")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    mp = MixedPrecisionPolicy(param_dtype=half, reduce_dtype=torch.float32 if half else None)
    for b in found:
        fully_shard(b, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def broadcast_module(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (after rank 0 loaded a checkpoint)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for t in model.state_dict().values():
            dist.broadcast(t, 0)


# ---------------------------------------------------------------- the job's devices
def describe_devices(device: torch.device) -> list[dict]:
    """[{rank, node, device}] of every rank (a collective)."""
    import socket

    from ..measure.hardware import device_name

    me = {"rank": dist.get_rank() if dist.is_initialized() else 0, "node": socket.gethostname(),
          "node_rank": int(os.environ.get("GROUP_RANK", "0")), "device": str(device),
          "device_name": device_name(device)}
    return gather_objects(me)


# ---------------------------------------------------------------- the launcher
def launch(argv: Sequence[str], nproc: int, python: Optional[str] = None) -> int:
    """Run `powertrain ARGV` under torchrun with `nproc` processes on this node; returns its exit status.

    >>> launch(["train", "xor"], nproc=2)  # doctest: +SKIP
    0
    """
    if nproc < 1:
        raise RecipeError(f"--nproc: expected a whole number >= 1, got {nproc}")
    cmd = [python or sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "powertrain", *argv]
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # torchrun got the same Ctrl-C and stops its workers: wait for it
        return proc.wait()


def default_out(recipe_name: str) -> Path:
    """The run directory a job writes when no --out is given (made now, empty, so that every restart of
    an elastic job resumes the same directory and two launches in one second get two)."""
    from ..run.rundir import RunDir

    return RunDir.default_path(recipe_name)


def refuse_before_launch(recipe) -> None:
    """What would fail inside torchrun, in every process, refused once before the launch."""
    if recipe.train.privacy is not None:
        raise RecipeError("train.privacy: DP-SGD runs in one process here (Poisson sampling and the accountant are not "
                          "distributed); train a private run without --nproc")
    if recipe.train.strategy == "fsdp" and recipe.model.name not in ("gpt", "transformer"):
        raise RecipeError(f"train.strategy: fsdp shards transformer blocks, and model '{recipe.model.name}' has none "
                          f"(models gpt and transformer have); use train.strategy=ddp for it")
