"""Sharded (FSDP) checkpoints, through `torch.distributed.checkpoint` (DCP): every rank writes and reads
its own shards of model and optimizer, `step-00001234/{.metadata, __<rank>_0.distcp ..., state.pt}`,
loadable by any world size (DCP reshards). As atomic as run/checkpoint.py's: a temp folder renamed into
place. Used by the FSDP strategy (strategy.py); every function here is a collective.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import RunDirError
from ..run.atomic import atomic_folder, atomic_write
from ..run.checkpoint import load_state
from .distributed import broadcast_object, on_main


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def save_sharded(folder: Path, model: torch.nn.Module, optimizer, state: dict, is_main: bool) -> Path:
    """Every rank writes its shards of the model and optimizer (DCP) into one temp folder, rank 0 adds
    state.pt and renames it into place: as atomic as `save`. A collective: every rank calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = Path(broadcast_object(str(folder.with_name(f".dcp-{folder.name}-{os.getpid()}")) if is_main else None))
    if is_main:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))  # fsyncs its files
    if is_main:
        def finish(staged: Path) -> None:  # atomic_folder's temp folder: move the shards in, add state.pt
            for f in tmp.iterdir():
                os.rename(f, staged / f.name)
            torch.save(state, staged / "state.pt")

        atomic_folder(folder, finish)
        tmp.rmdir()
    _barrier()
    return folder


def load_sharded(path: Path, model: torch.nn.Module, optimizer, is_main: bool) -> dict:
    """Load a sharded checkpoint into `model` and `optimizer` (sharded or not, any world size) and
    return state.pt, read by rank 0 and sent to the others. A collective in a job."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)  # the layout to fill (this world's shards)
    target = {"model": model_sd, "optim": optim_sd}
    try:
        dcp.load(target, checkpoint_id=str(path))
    except Exception as e:  # DCP wraps a rank's failure in CheckpointException
        raise RunDirError(f"sharded checkpoint '{path}' is damaged ({type(e).__name__}: {str(e)[:200]}); "
                          f"it cannot be loaded") from None
    set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"])
    state = on_main(lambda: load_state(path, "cpu"))
    return {**state, "optimizer": None}


def save_full_weights(model: torch.nn.Module, path: Path, is_main: bool) -> None:
    """An FSDP model's full weights gathered to rank 0 and written there as safetensors (a collective)."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if is_main:  # clones: tied weights too
        atomic_write(path, lambda tmp: save_file({k: v.contiguous().clone() for k, v in full.items()}, str(tmp)))


def load_full_weights(model: torch.nn.Module, path: Path, is_main: bool) -> None:
    """Rank 0 reads full weights from `path` and every rank loads its shard of them (a collective)."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full = load_file(str(path)) if is_main else {}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
