"""Atomic checkpoints: `checkpoints/step-00001234/{model.safetensors,state.pt}`.

FSDP writes sharded checkpoints instead, through `torch.distributed.checkpoint` (DCP):
`step-00001234/{.metadata, __<rank>_0.distcp ..., state.pt}`, model and optimizer in the shards,
loadable by any world size (DCP reshards), by a single process too.

A checkpoint is written into a hidden temp folder, each file fsynced, then renamed into place in one
step, so a kill at any moment leaves the previous checkpoint whole. Weights are safetensors (shared
tensors, e.g. tied embeddings, handled); optimizer, scheduler, RNG and step state are a torch file
loaded with `weights_only=True`, so a checkpoint can never run code.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from .errors import RunDirError

PREFIX = "step-"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Write weights to `path` atomically (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_model(model, str(tmp))
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def save(ckpt_dir: Path, step: int, model: torch.nn.Module, state: dict, keep: int = 2) -> Path:
    """Save step `step`; keep the newest `keep` checkpoints. Returns the checkpoint folder."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{PREFIX}{step:08d}"
    if not final.exists():  # the same step saved twice holds the same state
        for stale in ckpt_dir.glob(".tmp-*"):  # left by a write that was killed; never loaded
            shutil.rmtree(stale, ignore_errors=True)
        tmp = ckpt_dir / f".tmp-{step:08d}-{os.getpid()}"
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"))
        torch.save({**state, "step": step}, tmp / "state.pt")
        for f in (tmp / "model.safetensors", tmp / "state.pt", tmp):
            _fsync(f)
        os.rename(tmp, final)
        _fsync(ckpt_dir)
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp folders of an interrupted write are ignored)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def is_sharded(path: Path) -> bool:
    """A DCP (FSDP) checkpoint rather than model.safetensors + state.pt."""
    return (Path(path) / ".metadata").is_file()


def load(path: Path, model: torch.nn.Module, device, optimizer=None, map_location=None) -> dict:
    """Load weights into `model` and return the state dict; RunDirError names a corrupt file.
    A sharded checkpoint loads the optimizer too (pass it), and gives state["optimizer"] None."""
    if is_sharded(path):
        if optimizer is None:
            raise RunDirError(f"checkpoint '{path}' is sharded (FSDP): loading it needs the optimizer")
        return load_sharded(path, model, optimizer, True)
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False, device=str(device))
    except Exception as e:  # safetensors raises several types for a truncated or foreign file
        raise RunDirError(f"checkpoint '{path / 'model.safetensors'}' is unreadable ({e}); "
                          f"delete that folder to resume from the previous checkpoint") from None
    if missing or unexpected:
        raise RunDirError(f"checkpoint '{path}' does not match the model: missing {sorted(missing)[:3]}, "
                          f"unexpected {sorted(unexpected)[:3]}; was the recipe's model changed?")
    return _load_state(path, map_location if map_location is not None else device)


def _load_state(path: Path, map_location) -> dict:
    try:
        return torch.load(path / "state.pt", map_location=map_location, weights_only=True)
    except Exception as e:
        raise RunDirError(f"checkpoint '{path / 'state.pt'}' is unreadable ({type(e).__name__}); "
                          f"delete that folder to resume from the previous checkpoint") from None


def load_latest(ckpt_dir: Path, model: torch.nn.Module, device, optimizer=None, map_location=None) -> dict | None:
    """Load the newest loadable checkpoint, falling back to older ones with a warning; None if none."""
    found = list_checkpoints(ckpt_dir)
    for i, path in enumerate(reversed(found)):
        try:
            return load(path, model, device, optimizer, map_location)
        except RunDirError as e:
            if i == len(found) - 1:
                raise
            warnings.warn(f"{e}; trying the previous checkpoint", stacklevel=2)
    return None


# ---------------------------------------------------------------- sharded (FSDP) checkpoints
def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def save_sharded(ckpt_dir: Path, step: int, model: torch.nn.Module, optimizer, state: dict, keep: int,
                 is_main: bool) -> Path:
    """Every rank writes its shards of the model and optimizer (DCP) into one temp folder, rank 0 adds
    state.pt and renames it into place: as atomic as `save`. A collective: every rank calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from .distributed import broadcast_object

    final = ckpt_dir / f"{PREFIX}{step:08d}"
    tmp = ckpt_dir / f".tmp-{step:08d}-sharded"
    if not broadcast_object(final.exists() if is_main else None):
        if is_main:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            for stale in ckpt_dir.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        _barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))  # fsyncs its files
        if is_main:
            torch.save({**state, "step": step}, tmp / "state.pt")
            for f in (tmp / "state.pt", tmp):
                _fsync(f)
            os.rename(tmp, final)
            _fsync(ckpt_dir)
            for old in list_checkpoints(ckpt_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
    return final


def load_sharded(path: Path, model: torch.nn.Module, optimizer, is_main: bool) -> dict:
    """Load a sharded checkpoint into `model` and `optimizer` (sharded or not, any world size) and
    return state.pt, read by rank 0 and sent to the others. A collective in a job."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from .distributed import on_main

    model_sd, optim_sd = get_state_dict(model, optimizer)  # the layout to fill (this world's shards)
    target = {"model": model_sd, "optim": optim_sd}
    try:
        dcp.load(target, checkpoint_id=str(path))
    except Exception as e:  # DCP wraps a rank's failure in CheckpointException
        raise RunDirError(f"sharded checkpoint '{path}' is unreadable ({type(e).__name__}: {str(e)[:200]}); "
                          f"delete that folder to resume from the previous checkpoint") from None
    set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"])
    state = on_main(lambda: _load_state(path, "cpu"))
    return {**state, "optimizer": None}


def save_full_weights(model: torch.nn.Module, path: Path, is_main: bool) -> None:
    """An FSDP model's full weights gathered to rank 0 and written there as safetensors (a collective)."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if is_main:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        save_file({k: v.contiguous().clone() for k, v in full.items()}, str(tmp))  # clones: tied weights too
        _fsync(tmp)
        os.replace(tmp, path)


def load_full_weights(model: torch.nn.Module, path: Path, is_main: bool) -> None:
    """Rank 0 reads full weights from `path` and every rank loads its shard of them (a collective)."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full = load_file(str(path)) if is_main else {}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
