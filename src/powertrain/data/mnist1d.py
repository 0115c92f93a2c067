"""MNIST-1D (Greydanus 2020), generated offline by the `mnist1d` package with its default
arguments: 4000 train and 1000 test sequences of length 40, 10 classes. Generation takes ~3 s, so
the arrays are cached (as .npz, never pickle) under $POWERTRAIN_CACHE_DIR (default ~/.cache/powertrain)."""
from __future__ import annotations

import contextlib
import os
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..settings import cache_dir
from .bundle import DataMeta, DataOptions, holdout, make_bundle
from .registry import DATASETS


KEYS = ("x", "y", "x_test", "y_test")


def _cached(path: Path) -> dict | None:
    """The cached arrays, or None when there is no cache; a damaged cache is deleted (with a note)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in KEYS}
        if len(arrays["x"]) == len(arrays["y"]) and len(arrays["x_test"]) == len(arrays["y_test"]):
            return arrays
        reason = "arrays of different lengths"
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"
    warnings.warn(f"mnist1d cache '{path}' is damaged ({reason}); deleted, generating it again", stacklevel=3)
    path.unlink(missing_ok=True)
    return None


def _arrays() -> dict:
    path = cache_dir() / "mnist1d-default.npz"
    arrays = _cached(path)
    if arrays is not None:
        return arrays
    from mnist1d.data import get_dataset_args, make_dataset

    ds = make_dataset(get_dataset_args())  # deterministic: the package seeds its own generator
    arrays = {k: ds[k] for k in KEYS}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError:  # a read-only or full cache only costs time
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
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
