"""What a dataset gives the trainer: `DataBundle` (train/val/test splits and `DataMeta`), the two
kinds of split (tensors in memory, or a `Dataset` through a DataLoader), and helpers for loaders.

In-memory splits are tensors on the training device, batched by indexing with a slice of the
epoch's permutation (no per-sample collation). Any `torch.utils.data.Dataset` works too, through
a DataLoader fed with the same permutation, so both paths see the same order for the same seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Optional, Sequence

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..errors import DataError, RecipeError
from ..recipe.registry import Options

Task = Literal["multiclass", "binary", "regression", "reconstruction", "language_model"]
class DataOptions(Options):
    """Options every dataset takes; a dataset's own options class extends this."""

    val_fraction: float = Field(0.1, ge=0, lt=1)  # share of the train split held out for validation
    normalize: bool = True  # standardise with statistics of the train split only
    in_memory: bool = True  # False: serve batches through a DataLoader
    num_workers: int = Field(0, ge=0)  # DataLoader workers when in_memory is false
    reconstruct: bool = False  # targets are the inputs (autoencoders, VAEs): the task becomes reconstruction


@dataclass
class DataMeta:
    """What a model and the trainer need to know of a dataset. Typed fields are read by code; `extra`
    holds what a dataset reports for people (a cleaning report, its source path, statistics)."""

    input_shape: tuple[int, ...]  # one sample, without the batch dimension
    task: Task = "multiclass"
    num_classes: Optional[int] = None
    class_names: Optional[list[str]] = None
    extra: dict = field(default_factory=dict)  # reported, not read: e.g. {"source": path, "report": ...}
    vocab: Optional[Any] = None  # text: the token vocabulary (encode, decode, itos, to_dict); kept in vocab.json
    vocab_size: Optional[int] = None  # token inputs: number of token ids (embedding rows)
    input_dtype: torch.dtype = torch.float32  # torch.long for token ids
    pad_id: Optional[int] = None  # token id that pads sequences at their end
    augment: Optional[Any] = None  # AugmentOptions the trainer applies to train batches (data/augment.py)
    normalization: Optional[dict] = None  # {"mean", "std"} of the train split, to show inputs in their own units
    targets: int = 1  # regression: number of target columns

    def __post_init__(self):
        for key in TYPED_KEYS:  # DataMeta(..., extra={"vocab_size": 65}) still works: typed fields are read
            if key in self.extra:
                setattr(self, key, self.extra[key])
        self.extra = {k: v for k, v in self.extra.items() if k not in TYPED_KEYS}  # the caller's dict is left as is


TYPED_KEYS = ("vocab", "vocab_size", "input_dtype", "pad_id", "augment", "normalization", "targets")


def _names(n: int) -> list[str]:
    return ["x", "y"] if n == 2 else [f"tensor {i}" for i in range(n)]


class TensorSplit:
    """A split held as tensors with equal first dimension; `batch(idx)` indexes all of them."""

    def __init__(self, *tensors: torch.Tensor, name: str = "split"):
        if not tensors:
            raise DataError(f"data: the {name} split has no tensors; pass (x, y) tensors")
        if any(len(t) != len(tensors[0]) for t in tensors):
            lengths = " and ".join(f"{n} has {len(t)}" for n, t in zip(_names(len(tensors)), tensors))
            raise DataError(f"data: the {name} split's tensors differ in length ({lengths} samples); "
                            f"give one row per sample in each, e.g. cut both to the same length")
        self.tensors, self.name = tensors, name

    def __len__(self) -> int:
        return len(self.tensors[0])

    def to(self, device) -> "TensorSplit":
        return TensorSplit(*(t.to(device) for t in self.tensors), name=self.name)

    def batches(self, order: torch.Tensor, batch_size: int, start: int = 0) -> Iterator[tuple]:
        order = order.to(self.tensors[0].device)
        for i in range(start * batch_size, len(order), batch_size):
            idx = order[i : i + batch_size]
            yield tuple(t[idx] for t in self.tensors)


class LoaderSplit:
    """A `Dataset` served through a DataLoader, in the order the trainer gives."""

    def __init__(self, dataset: Dataset, num_workers: int = 0):
        self.dataset, self.num_workers, self.device = dataset, num_workers, torch.device("cpu")

    def __len__(self) -> int:
        return len(self.dataset)

    def to(self, device) -> "LoaderSplit":
        self.device = torch.device(device)
        return self

    def batches(self, order: torch.Tensor, batch_size: int, start: int = 0) -> Iterator[tuple]:
        order = order.tolist()
        sampler = [order[i : i + batch_size] for i in range(start * batch_size, len(order), batch_size)]
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda")
        for batch in loader:
            yield tuple(t.to(self.device, non_blocking=True) for t in batch)


@dataclass
class DataBundle:
    train: TensorSplit | LoaderSplit
    val: Optional[TensorSplit | LoaderSplit]
    test: Optional[TensorSplit | LoaderSplit]
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
