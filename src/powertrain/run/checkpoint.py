"""Checkpoint files: `step-00001234/{model.safetensors,state.pt}` (where they go is RunDir's business).

FSDP writes sharded checkpoints instead (train/sharded.py, through `torch.distributed.checkpoint`):
`step-00001234/{.metadata, __<rank>_0.distcp ..., state.pt}`, model and optimizer in the shards,
loadable by any world size (DCP reshards); `is_sharded` and `validate` here know that layout.

A checkpoint is written into a hidden temp folder, each file fsynced, then renamed into place
(atomic.atomic_folder), so a kill at any moment leaves the previous checkpoint whole; a checkpoint of a
step that exists already is rewritten. Weights are safetensors (shared tensors, e.g. tied embeddings,
handled); optimizer, scheduler, RNG and step state are a torch file loaded with `weights_only=True`, so
a checkpoint can never run code. Nothing here falls back to an older checkpoint: a damaged one is an
error naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from .atomic import atomic_folder, atomic_write, fsync_path
from .storage import write_failure
from ..errors import RunDirError


def save(folder: Path, model: torch.nn.Module, state: dict) -> Path:
    """Write model.safetensors and state.pt into `folder` atomically; returns it. A failed write (a full
    disk: torch says "unexpected pos", safetensors "No space left on device") is one WriteError line naming
    the checkpoints kept and the resume command (storage.write_failure)."""
    def write(tmp: Path) -> None:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")

    try:
        return atomic_folder(folder, write)
    except Exception as e:  # noqa: BLE001  (torch and safetensors raise their own types for a failed write)
        raise write_failure(e, Path(folder)) from None


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Weights alone (best.safetensors), atomically; a failed write as in `save`."""
    try:
        atomic_write(path, lambda tmp: save_model(model, str(tmp)))
    except Exception as e:  # noqa: BLE001
        raise write_failure(e, Path(path)) from None


def is_sharded(path: Path) -> bool:
    """A DCP (FSDP) checkpoint rather than model.safetensors + state.pt."""
    return (Path(path) / ".metadata").is_file()


def load_weights(model: torch.nn.Module, path: Path, device) -> None:
    """Weights from a checkpoint folder or a .safetensors file into `model`; a one-line error names a
    damaged file or a model that does not match."""
    path = Path(path)
    file = path if path.suffix == ".safetensors" else path / "model.safetensors"
    if path.is_dir() and is_sharded(path):
        raise RunDirError(f"checkpoint '{path}' is sharded (FSDP): load it through its run (powertrain eval)")
    try:
        missing, unexpected = load_model(model, str(file), strict=False, device=str(device))
    except FileNotFoundError:
        raise RunDirError(f"checkpoint file '{file}' is missing (removed or replaced while it was read: is a run "
                          f"training there? `powertrain runs` says)") from None
    except Exception as e:  # safetensors raises several types for a truncated or foreign file
        raise RunDirError(f"checkpoint file '{file}' is damaged ({type(e).__name__}); it cannot be loaded") from None
    if missing or unexpected:
        raise RunDirError(f"checkpoint '{file}' does not match the model: missing {sorted(missing)[:3]}, "
                          f"unexpected {sorted(unexpected)[:3]}; was the recipe's model changed?")


def load_state(path: Path, map_location="cpu") -> dict:
    try:
        return torch.load(Path(path) / "state.pt", map_location=map_location, weights_only=True)
    except Exception as e:
        raise RunDirError(f"checkpoint file '{Path(path) / 'state.pt'}' is damaged or missing ({type(e).__name__}); "
                          f"it cannot be loaded") from None


def load(path: Path, model: torch.nn.Module, device, map_location=None) -> dict:
    """Load a (non-sharded) checkpoint's weights into `model`; return its state."""
    load_weights(model, path, device)
    return load_state(path, map_location if map_location is not None else device)


def validate(path: Path) -> None:
    """A checkpoint folder is whole: its files exist and parse (the safetensors header, and every byte it
    promises; state.pt with weights_only). Sharded: .metadata and state.pt. A one-line error otherwise."""
    path = Path(path)
    if not is_sharded(path):
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise RunDirError(f"checkpoint '{path}' is incomplete: 'model.safetensors' is missing")
        _check_safetensors(weights)
    load_state(path)


def _check_safetensors(path: Path) -> None:
    with open(path, "rb") as f:
        try:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, MemoryError, OverflowError):
            raise RunDirError(f"checkpoint file '{path}' is damaged (bad header); it cannot be loaded") from None
    if path.stat().st_size < 8 + n + end:
        raise RunDirError(f"checkpoint file '{path}' is damaged (truncated: {path.stat().st_size} of "
                          f"{8 + n + end} bytes); it cannot be loaded")


__all__ = ["save", "save_weights", "load", "load_weights", "load_state", "validate", "is_sharded", "fsync_path"]
