"""MNIST-1D (Greydanus 2020), generated offline by the `mnist1d` package with its default
arguments: 4000 train and 1000 test sequences of length 40, 10 classes."""
from __future__ import annotations

import numpy as np

from . import DATASETS, DataMeta, DataOptions, holdout, make_bundle


@DATASETS.register("mnist1d", DataOptions)
def mnist1d(opts: DataOptions, seed: int):
    """MNIST-1D, 4000 train / 1000 test, as (1, 40) signals; val is held out of train by seed."""
    from mnist1d.data import get_dataset_args, make_dataset

    ds = make_dataset(get_dataset_args())  # deterministic: the package seeds its own generator
    x, y = ds["x"].astype(np.float32)[:, None, :], ds["y"].astype(np.int64)
    test = (ds["x_test"].astype(np.float32)[:, None, :], ds["y_test"].astype(np.int64))
    train, val = holdout(x, y, opts.val_fraction, seed)
    meta = DataMeta((1, 40), "multiclass", 10, [str(i) for i in range(10)])
    return make_bundle(train, val, test, meta, opts, norm_axis=None)
