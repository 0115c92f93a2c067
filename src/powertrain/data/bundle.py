"""What a dataset gives the trainer: `DataBundle` (train/val/test splits and `DataMeta`, both kinds of
split in splits.py), the ways in from anything else (`coerce`, `from_dataset`, `from_loaders`: sources.py),
and helpers for loaders.

In-memory splits are tensors on the training device, batched by indexing with a slice of the
epoch's permutation (no per-sample collation). Any `torch.utils.data.Dataset` works too, through
a DataLoader fed with the same permutation, so both paths see the same order for the same seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import DataLoader, TensorDataset

from ..errors import DataError, RecipeError
from ..recipe.registry import Options
from . import sources
from .splits import TYPED_KEYS, DataMeta, LoaderSplit, Task, TensorSplit, as_batch  # noqa: F401  (their home was here)


class DataOptions(Options):
    """Options every dataset takes; a dataset's own options class extends this."""

    val_fraction: float = Field(0.1, ge=0, lt=1)  # share of the train split held out for validation
    normalize: bool = True  # standardise with statistics of the train split only
    in_memory: bool = True  # False: serve batches through a DataLoader
    num_workers: int = Field(0, ge=0)  # DataLoader workers when in_memory is false
    reconstruct: bool = False  # targets are the inputs (autoencoders, VAEs): the task becomes reconstruction


@dataclass
class DataBundle:
    train: Any  # TensorSplit, LoaderSplit or StreamSplit (data/sources.py): len, to(device), batches(order, n, start)
    val: Optional[Any]
    test: Optional[Any]
    meta: DataMeta

    def to(self, device) -> "DataBundle":
        move = lambda s: None if s is None else s.to(device)  # noqa: E731
        return DataBundle(move(self.train), move(self.val), move(self.test), self.meta)

    def split(self, name: str):
        if name not in ("train", "val", "test") or getattr(self, name) is None:
            have = [n for n in ("train", "val", "test") if getattr(self, n) is not None]
            raise RecipeError(f"split '{name}': this dataset has no such split; expected one of {', '.join(have)}")
        return getattr(self, name)

    @classmethod
    def coerce(cls, data: Any) -> "DataBundle":
        """Anything `Trainer(model, data)` takes, as a DataBundle: a DataBundle as it is; a DataLoader
        (`from_loaders`); a torch or Hugging Face Dataset (`from_dataset`); an (x, y) pair of arrays or
        tensors (`from_tensors`)."""
        return sources.coerce(cls, data)

    @classmethod
    def from_dataset(cls, train, val=None, test=None, inputs=None, target=None, *, task: Optional[Task] = None,
                     num_classes: Optional[int] = None, input_shape: Optional[tuple] = None,
                     num_workers: int = 0) -> "DataBundle":
        """Torch Datasets (map-style or iterable; tuple or dict samples) or Hugging Face `datasets.Dataset`s.
        Map-style datasets are batched in the Trainer's seeded order (resume is bit-equal); dict samples
        take `inputs` (a key, or a list of keys stacked as features) and `target`. Input shape, task and
        class count are inferred from the first sample and the labels unless given."""
        return sources.from_dataset(cls, train, val, test, inputs, target, task, num_classes, input_shape, num_workers)

    @classmethod
    def from_loaders(cls, train: DataLoader, val: Optional[DataLoader] = None, test: Optional[DataLoader] = None, *,
                     inputs=None, target=None, task: Optional[Task] = None, num_classes: Optional[int] = None,
                     input_shape: Optional[tuple] = None) -> "DataBundle":
        """Your DataLoaders, their batches as they come: the train loader's batch_size is the run's. A
        shuffling loader is reseeded each epoch from the Trainer's seed, so that resume sees the same order."""
        return sources.from_loaders(cls, train, val, test, inputs, target, task, num_classes, input_shape)

    def fit_config(self, cfg):
        """`cfg` with the train loader's batch size when the batches come from a user's DataLoader."""
        n = getattr(self.train, "batch_size", None)
        return cfg if n is None or n == cfg.batch_size else cfg.model_copy(update={"batch_size": n})

    @classmethod
    def from_tensors(cls, train: Sequence[torch.Tensor], val=None, test=None, task: Task = "multiclass",
                     num_classes: Optional[int] = None) -> "DataBundle":
        """Wrap (x, y) tensor pairs: `DataBundle.from_tensors((x, y), test=(xt, yt))`."""
        splits = {name: None if s is None else TensorSplit(*s, name=name)
                  for name, s in (("train", train), ("val", val), ("test", test))}
        for name, split in splits.items():
            if split is not None and len(split) == 0:
                raise DataError(f"DataBundle.from_tensors: the {name} split is empty (0 samples); pass at least one "
                                f"sample{'' if name == 'train' else f', or {name}=None to leave it out'}")
        x, y = train
        if num_classes is None and task == "multiclass":
            num_classes = int(y.max()) + 1
        return cls(splits["train"], splits["val"], splits["test"], DataMeta(tuple(x.shape[1:]), task, num_classes))


# ---------------------------------------------------------------- helpers for loaders
def holdout(x: np.ndarray, y: np.ndarray, fraction: float, seed: int, stratify: bool = True):
    """Split off `fraction` of (x, y), stratified by class, reproducible from `seed`."""
    if fraction <= 0:
        return (x, y), None
    from sklearn.model_selection import train_test_split

    strat = y if stratify and len(np.unique(y)) < len(y) * fraction else None
    xa, xb, ya, yb = train_test_split(x, y, test_size=fraction, random_state=seed, stratify=strat)
    return (xa, ya), (xb, yb)


def standardize(train: np.ndarray, *others, axis=0):
    """Scale by mean and std of `train` over `axis`; the same statistics are applied to `others`."""
    mean = train.mean(axis=axis, keepdims=True)
    std = train.std(axis=axis, keepdims=True)
    std[std == 0] = 1.0
    return [None if o is None else (o - mean) / std for o in (train, *others)]


def make_bundle(train, val, test, meta: DataMeta, opts: DataOptions, norm_axis=0) -> DataBundle:
    """numpy (x, y) pairs -> normalised float32/int64 tensor splits."""
    xs = [None if s is None else s[0] for s in (train, val, test)]
    if opts.normalize:
        raw = xs[0]
        xs = standardize(*xs, axis=norm_axis)
        if "standardize" not in meta.extra:  # as the csv loader reports it: model input = (x - mean) / std
            mean, std = raw.mean(axis=norm_axis), raw.std(axis=norm_axis)
            meta.extra["standardize"] = {"mean": np.atleast_1d(mean).ravel().tolist(),
                                         "std": np.atleast_1d(np.where(std == 0, 1.0, std)).ravel().tolist()}
    y_dtype = torch.float32 if meta.task in ("binary", "regression") else torch.long

    def split(x, s, name):
        if s is None:
            return None
        tensors = TensorSplit(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(s[1], dtype=y_dtype), name=name)
        return tensors if opts.in_memory else LoaderSplit(TensorDataset(*tensors.tensors), opts.num_workers)

    return DataBundle(*(split(x, s, n) for x, s, n in zip(xs, (train, val, test), ("train", "val", "test"))), meta)
