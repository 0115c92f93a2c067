"""Datasets: a registry of loaders, each returning a `DataBundle` of train/val/test splits.

In-memory splits are tensors on the training device, batched by indexing with a slice of the
epoch's permutation (no per-sample collation). Any `torch.utils.data.Dataset` works too, through
a DataLoader fed with the same permutation, so both paths see the same order for the same seed.

>>> from powertrain import data
>>> bundle = data.build({"name": "xor"}, seed=0)
>>> bundle.meta.num_classes, len(bundle.train)
(2, 4)
"""
from __future__ import annotations

from .bundle import (DataBundle, DataMeta, DataOptions, LoaderSplit, Task, TensorSplit, TYPED_KEYS,  # noqa: F401
                     holdout, make_bundle, standardize)
from .registry import DATASETS


def build(section: dict, seed: int = 0) -> DataBundle:
    """Build the dataset named by `section["name"]` with its options."""
    entry = DATASETS.get(section["name"])
    opts = DATASETS.options(section)
    bundle = entry.build(opts, seed)
    if getattr(opts, "reconstruct", False):
        bundle.meta.task = "reconstruction"
    return bundle


from . import augment, csvdata, folders, images, mnist1d, tabular, text  # noqa: E402,F401  (register the built-in datasets)
