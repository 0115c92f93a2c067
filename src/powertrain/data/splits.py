"""The kinds of split a DataBundle holds, and what the trainer knows of a dataset (`DataMeta`):
`TensorSplit` (tensors in memory, batched by indexing), `LoaderSplit` (a `Dataset` through a DataLoader,
in the trainer's order); `StreamSplit` (a user's DataLoader, an iterable dataset) is in sources.py.
Every split has `len`, `to(device)` and `batches(order, batch_size, start)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError

Task = Literal["multiclass", "binary", "regression", "reconstruction", "language_model"]


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
    """A `Dataset` served through a DataLoader, in the order the trainer gives. Samples may be tuples
    or dicts; `fields` = (inputs, target) names the dict keys that become the batch (x, y)."""

    def __init__(self, dataset: Dataset, num_workers: int = 0, fields: Optional[tuple] = None):
        self.dataset, self.num_workers, self.device = dataset, num_workers, torch.device("cpu")
        self.fields = fields

    def __len__(self) -> int:
        return len(self.dataset)

    def to(self, device) -> "LoaderSplit":
        self.device = torch.device(device)
        return self

    def batches(self, order: torch.Tensor, batch_size: int, start: int = 0) -> Iterator[tuple]:
        order = order.tolist()
        sampler = [order[i : i + batch_size] for i in range(start * batch_size, len(order), batch_size)]
        seed = hash((tuple(order[:16]), len(order), start)) & 0x7FFF_FFFF_FFFF  # workers' seed; not the global RNG
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(seed))
        for batch in loader:
            yield as_batch(batch, self.fields, self.device)


def as_batch(batch, fields: Optional[tuple], device) -> tuple:
    """A collated batch (tuple, list, dict or one tensor) -> a tuple of tensors (x, ..., y) on `device`:
    dict batches keep `fields` = (inputs, target); float64 becomes float32 (what models hold)."""
    if isinstance(batch, dict):
        inputs, target = fields if fields else (None, None)
        if inputs is None or target is None:
            raise DataError(f"data: batches are dicts with keys {', '.join(map(str, batch))}; name the model input "
                            f"and the label with inputs=KEY and target=KEY")
        x = torch.stack([torch.as_tensor(batch[k]).float() for k in inputs], -1) if isinstance(inputs, (list, tuple)) \
            else batch[inputs]
        batch = (x, batch[target])
    elif isinstance(batch, torch.Tensor):
        batch = (batch,)
    return tuple((t.float() if t.dtype == torch.float64 else t).to(device, non_blocking=True)
                 for t in (torch.as_tensor(b) for b in batch))
