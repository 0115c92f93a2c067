"""Any data into a DataBundle: DataLoaders, torch Datasets (map-style or iterable, tuple or dict
samples), Hugging Face `datasets.Dataset`s and (x, y) arrays. `DataBundle.coerce`, `from_dataset` and
`from_loaders` (bundle.py) call these.

Map-style datasets become `LoaderSplit`s, batched in the Trainer's seeded order: a resumed run sees the
same batches, bit for bit. A user's DataLoader (or an iterable dataset) becomes a `StreamSplit`: its
batches as they come; a resumed run skips the batches of the epoch already trained. The shuffle of a
DataLoader is reseeded each epoch from the Trainer's seed and the epoch (its sampler's and its workers'
generator), so a resumed run gets the same order as long as the dataset's own transforms are seeded.

What the Trainer needs besides the batches (input shape, task, class count) is read from the first
sample and the labels: a TensorDataset's last tensor, a `targets`/`labels` attribute, a Hugging Face
label column, else one pass over the data (at most `SCAN_LIMIT` samples); what cannot be read is a
one-line error naming the argument to pass.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from ..errors import DataError
from .splits import DataMeta, LoaderSplit, as_batch

SCAN_LIMIT = 100_000  # samples read to find the labels of a dataset that does not hold them as a tensor
TARGET_KEYS = ("label", "labels", "target", "targets", "y")
INPUT_KEYS = ("x", "input", "inputs", "features", "pixel_values", "image", "input_ids")


class StreamSplit:
    """A user's DataLoader (its batches as they come; `batch_size` is its own) or an iterable Dataset
    (batched to the size asked). `batches(order, n, start)` gives the stream cut into batches of n from
    batch `start`, stopping after len(order) samples; `order` only seeds the shuffle."""

    def __init__(self, source, fields: Optional[tuple] = None, name: str = "train"):
        self.source, self.fields, self.name, self.device = source, fields, name, torch.device("cpu")
        self.loader = source if isinstance(source, DataLoader) else None
        if self.loader is not None and self.loader.batch_size is None:
            raise DataError(f"data: the {name} DataLoader has a batch_sampler and no batch_size; give it batch_size=N, "
                            f"or pass its dataset through DataBundle.from_dataset")
        self.batch_size = self.loader.batch_size if self.loader is not None else None
        g = getattr(self.loader, "generator", None)
        self._user_seed = g.initial_seed() if g is not None else 0
        self._len: Optional[int] = None
        self.labels: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        if self._len is None:
            self._len = self._sized()
        if self._len is None:  # an iterable dataset without __len__: counted once
            self.scan()
        return self._len

    def _sized(self) -> Optional[int]:
        ds = self.loader.dataset if self.loader is not None else self.source
        if isinstance(ds, IterableDataset) and not hasattr(ds, "__len__"):
            return None
        try:
            n = len(ds)
        except TypeError:
            return None
        if self.loader is not None and self.loader.drop_last:
            n = (n // self.batch_size) * self.batch_size
        return n

    def to(self, device) -> "StreamSplit":
        self.device = torch.device(device)
        return self

    def _raw(self, n: int, seed: int) -> Iterator[tuple]:
        if self.loader is None:
            for b in DataLoader(self.source, batch_size=n, generator=torch.Generator().manual_seed(seed)):
                yield as_batch(b, self.fields, "cpu")
            return
        g = torch.Generator().manual_seed(seed)
        self.loader.generator = g  # the workers' base seed; else each iter() draws from the global RNG
        if hasattr(self.loader.sampler, "generator"):  # RandomSampler: the shuffle follows (seed, epoch)
            self.loader.sampler.generator = g
        for b in self.loader:
            yield as_batch(b, self.fields, "cpu")

    def batches(self, order: torch.Tensor, batch_size: int, start: int = 0) -> Iterator[tuple]:
        total, done = len(order), 0
        seed = hash((self._user_seed, tuple(order[:16].tolist()), len(order))) & 0x7FFF_FFFF_FFFF
        stream = self._raw(batch_size, seed)
        if self.batch_size != batch_size:
            stream = _rechunk(stream, batch_size)
        for i, b in enumerate(stream):
            if done >= total:
                return
            if i >= start:
                b = b if done + len(b[0]) <= total else tuple(t[: total - done] for t in b)
                yield tuple(t.to(self.device, non_blocking=True) for t in b)
            done += len(b[0])

    def scan(self) -> None:
        """One pass: count the samples, keep the labels (when they are fewer than SCAN_LIMIT samples)."""
        count, labels = 0, []
        for b in self._raw(self.batch_size or 256, seed=0):
            count += len(b[0])
            if count <= SCAN_LIMIT:
                labels.append(b[-1])
        self._len = self._len if self._len is not None else count
        self.labels = torch.cat(labels) if labels and count <= SCAN_LIMIT else None


def _rechunk(stream: Iterator[tuple], n: int) -> Iterator[tuple]:
    buf, have = [], 0
    for b in stream:
        buf.append(b)
        have += len(b[0])
        while have >= n:
            cat = buf[0] if len(buf) == 1 else tuple(torch.cat(ts) for ts in zip(*buf))
            yield tuple(t[:n] for t in cat)
            have -= n
            buf = [tuple(t[n:] for t in cat)] if have else []
    if have:
        yield buf[0] if len(buf) == 1 else tuple(torch.cat(ts) for ts in zip(*buf))


# ---------------------------------------------------------------- fields, labels, meta
def _is_hf(ds) -> bool:
    return hasattr(ds, "column_names") and hasattr(ds, "with_format")


def _fields(sample, inputs, target, where: str) -> Optional[tuple]:
    """(inputs, target) for dict samples; None for tuple samples."""
    if not isinstance(sample, dict):
        return None
    keys = list(sample)
    target = target or next((k for k in TARGET_KEYS if k in sample), None)
    rest = [k for k in keys if k != target]
    inputs = inputs or (rest[0] if len(rest) == 1 else next((k for k in INPUT_KEYS if k in sample), None))
    if target is None or inputs is None:
        raise DataError(f"{where}: samples are dicts with keys {', '.join(map(str, keys))}; name the model input and "
                        f"the label: inputs='KEY' (or a list of keys, stacked as features) and target='KEY'")
    for k in ([inputs] if isinstance(inputs, str) else list(inputs)) + [target]:
        if k not in sample:
            raise DataError(f"{where}: '{k}' is not a key of the samples; expected one of {', '.join(map(str, keys))}")
    return inputs, target


def _labels_of(ds, fields) -> Optional[torch.Tensor]:
    """The labels of a map-style dataset without loading its samples, where it holds them."""
    if isinstance(ds, TensorDataset):
        return ds.tensors[-1]
    if _is_hf(ds) and fields:
        return torch.as_tensor(np.asarray(ds.with_format("numpy")[fields[1]]))
    for attr in ("targets", "labels"):
        y = getattr(ds, attr, None)
        if y is not None and not callable(y) and len(y) == len(ds):
            return torch.as_tensor(np.asarray(y))
    return None


def _meta(x: torch.Tensor, labels: Optional[torch.Tensor], task, num_classes, input_shape, where: str) -> DataMeta:
    """DataMeta from one sample's input and all labels; `x` has no batch dimension."""
    given = f"pass task= and num_classes= to {where}"
    if task is None:
        if labels is None:
            raise DataError(f"{where}: the labels could not be read without a pass over more than {SCAN_LIMIT} samples; "
                            f"{given}")
        task = "regression" if labels.is_floating_point() else "multiclass"
    if task == "multiclass" and num_classes is None:
        if labels is None:
            raise DataError(f"{where}: the number of classes is unknown (labels not readable); pass num_classes=")
        num_classes = int(labels.max()) + 1
    targets = int(labels[0].numel()) if task == "regression" and labels is not None and len(labels) else 1
    dtype = torch.float32 if x.is_floating_point() else x.dtype
    return DataMeta(tuple(input_shape or x.shape), task, num_classes, input_dtype=dtype, targets=targets)


def _first(split) -> tuple:
    return next(split.batches(torch.arange(1), 1))


# ---------------------------------------------------------------- the three entry points
def from_dataset(cls, train, val, test, inputs, target, task, num_classes, input_shape, num_workers: int = 0):
    where = "DataBundle.from_dataset"
    splits, fields = {}, None
    for name, ds in (("train", train), ("val", val), ("test", test)):
        if ds is None:
            splits[name] = None
            continue
        if not isinstance(ds, (Dataset, IterableDataset)) and not _is_hf(ds):
            raise DataError(f"{where}: {name} is a {type(ds).__name__}; expected a torch Dataset or a Hugging Face "
                            f"datasets.Dataset (for a DataLoader use DataBundle.from_loaders)")
        if _is_hf(ds):
            if len(ds) == 0:
                raise DataError(f"{where}: the {name} split is empty (0 rows); pass at least one row")
            fields = fields or _fields(ds[0], inputs, target, where)
            cols = (list(fields[0]) if not isinstance(fields[0], str) else [fields[0]]) + [fields[1]]
            ds = ds.with_format("torch", columns=cols)
        elif isinstance(ds, IterableDataset):
            fields = fields or _fields(next(iter(ds)), inputs, target, where)
            splits[name] = StreamSplit(ds, fields, name)
            continue
        else:
            if len(ds) == 0:
                raise DataError(f"{where}: the {name} split is empty (0 samples); pass at least one sample")
            fields = fields or _fields(ds[0], inputs, target, where)
        splits[name] = LoaderSplit(ds, num_workers, fields)
    first = _first(splits["train"])
    labels = None
    if task is None or (task == "multiclass" and num_classes is None):
        tr = splits["train"]
        labels = _labels_of(tr.dataset, fields) if isinstance(tr, LoaderSplit) else None
        if labels is None:
            labels = _scan(tr)
    meta = _meta(first[0][0], labels, task, num_classes, input_shape, where)
    return cls(splits["train"], splits["val"], splits["test"], meta)


def _scan(split) -> Optional[torch.Tensor]:
    if isinstance(split, StreamSplit):
        split.scan()
        return split.labels
    if len(split) > SCAN_LIMIT:
        return None
    return torch.cat([b[-1] for b in split.batches(torch.arange(len(split)), 1024)])


def from_loaders(cls, train, val, test, inputs, target, task, num_classes, input_shape):
    where = "DataBundle.from_loaders"
    splits = {}
    for name, loader in (("train", train), ("val", val), ("test", test)):
        if loader is not None and not isinstance(loader, DataLoader):
            raise DataError(f"{where}: {name} is a {type(loader).__name__}; expected a torch DataLoader "
                            f"(for a Dataset use DataBundle.from_dataset)")
        splits[name] = None if loader is None else StreamSplit(loader, None, name)
    tr = splits["train"]
    raw = next(iter(DataLoader(tr.loader.dataset, batch_size=1, collate_fn=tr.loader.collate_fn,
                               generator=torch.Generator())))  # no draw from the global RNG
    fields = _fields(raw, inputs, target, where)
    for s in splits.values():
        if s is not None:
            s.fields = fields
    labels = None
    if task is None or (task == "multiclass" and num_classes is None):
        ds = tr.loader.dataset
        labels = None if isinstance(ds, IterableDataset) else _labels_of(ds, fields)
        if labels is None:
            labels = _scan(tr)
    meta = _meta(_first(tr)[0][0], labels, task, num_classes, input_shape, where)
    return cls(splits["train"], splits["val"], splits["test"], meta)


def coerce(cls, data: Any):
    """See `DataBundle.coerce`."""
    if isinstance(data, cls):
        return data
    if isinstance(data, DataLoader):
        return from_loaders(cls, data, None, None, None, None, None, None, None)
    if isinstance(data, (Dataset, IterableDataset)) or _is_hf(data):
        return from_dataset(cls, data, None, None, None, None, None, None, None)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(hasattr(a, "shape") for a in data):
        x, y = (torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a for a in data)
        x = x.float() if x.is_floating_point() else x
        task = "regression" if y.is_floating_point() else "multiclass"
        y = y.float() if task == "regression" else y.long()
        return cls.from_tensors((x, y), task=task)
    raise DataError(f"Trainer: data is a {type(data).__name__}; expected a DataBundle, a DataLoader, a torch or Hugging "
                    f"Face Dataset, or an (x, y) pair of arrays")
