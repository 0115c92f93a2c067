"""MNIST-1D (Greydanus 2020), generated offline by the `mnist1d` package with its default
arguments: 4000 train and 1000 test sequences of length 40, 10 classes. Generation takes ~3 s, so
the arrays are cached (as .npz, never pickle) under $POWERTRAIN_CACHE or ~/.cache/powertrain."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import DATASETS, DataMeta, DataOptions, holdout, make_bundle


def cache_dir() -> Path:
    root = os.environ.get("POWERTRAIN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "powertrain"
    return Path(root)


def _arrays() -> dict:
    path = cache_dir() / "mnist1d-default.npz"
    try:
        with np.load(path, allow_pickle=False) as f:
            return dict(f)
    except (OSError, ValueError, KeyError):
        pass
    from mnist1d.data import get_dataset_args, make_dataset

    ds = make_dataset(get_dataset_args())  # deterministic: the package seeds its own generator
    arrays = {k: ds[k] for k in ("x", "y", "x_test", "y_test")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs time
    return arrays


@DATASETS.register("mnist1d", DataOptions)
def mnist1d(opts: DataOptions, seed: int):
    """MNIST-1D, 4000 train / 1000 test, as (1, 40) signals; val is held out of train by seed."""
    ds = _arrays()
    x, y = ds["x"].astype(np.float32)[:, None, :], ds["y"].astype(np.int64)
    test = (ds["x_test"].astype(np.float32)[:, None, :], ds["y_test"].astype(np.int64))
    train, val = holdout(x, y, opts.val_fraction, seed)
    meta = DataMeta((1, 40), "multiclass", 10, [str(i) for i in range(10)])
    return make_bundle(train, val, test, meta, opts, norm_axis=None)
