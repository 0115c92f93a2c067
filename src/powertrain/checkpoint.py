"""Atomic checkpoints: `checkpoints/step-00001234/{model.safetensors,state.pt}`.

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


def load(path: Path, model: torch.nn.Module, device) -> dict:
    """Load weights into `model` and return the state dict; RunDirError names a corrupt file."""
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False, device=str(device))
    except Exception as e:  # safetensors raises several types for a truncated or foreign file
        raise RunDirError(f"checkpoint '{path / 'model.safetensors'}' is unreadable ({e}); "
                          f"delete that folder to resume from the previous checkpoint") from None
    if missing or unexpected:
        raise RunDirError(f"checkpoint '{path}' does not match the model: missing {sorted(missing)[:3]}, "
                          f"unexpected {sorted(unexpected)[:3]}; was the recipe's model changed?")
    try:
        return torch.load(path / "state.pt", map_location=device, weights_only=True)
    except Exception as e:
        raise RunDirError(f"checkpoint '{path / 'state.pt'}' is unreadable ({type(e).__name__}); "
                          f"delete that folder to resume from the previous checkpoint") from None


def load_latest(ckpt_dir: Path, model: torch.nn.Module, device) -> dict | None:
    """Load the newest loadable checkpoint, falling back to older ones with a warning; None if none."""
    found = list_checkpoints(ckpt_dir)
    for i, path in enumerate(reversed(found)):
        try:
            return load(path, model, device)
        except RunDirError as e:
            if i == len(found) - 1:
                raise
            warnings.warn(f"{e}; trying the previous checkpoint", stacklevel=2)
    return None
