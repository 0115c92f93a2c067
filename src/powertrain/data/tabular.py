"""Small tabular datasets: XOR, and sklearn's digits, iris, wine, breast_cancer and diabetes (bundled, offline)."""
from __future__ import annotations

import numpy as np
from pydantic import Field

from .bundle import DataMeta, DataOptions, holdout, make_bundle
from .registry import DATASETS


@DATASETS.register("xor", DataOptions)
def xor(opts: DataOptions, seed: int):
    """The four XOR points; train, val and test are all four (there is nothing to hold out)."""
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([0, 1, 1, 0], dtype=np.float32)
    opts = opts.model_copy(update={"normalize": False})
    return make_bundle((x, y), (x, y), (x, y), DataMeta((2,), "binary", 2, ["0", "1"]), opts)


class SklearnOptions(DataOptions):
    test_fraction: float = Field(0.2, gt=0, lt=1)  # share of all samples held out as the test split


def _sklearn(loader_name: str, image_shape=None):
    def build(opts: SklearnOptions, seed: int):
        from sklearn import datasets

        ds = getattr(datasets, loader_name)()
        x, y = ds.data.astype(np.float32), ds.target.astype(np.int64)
        rest, test = holdout(x, y, opts.test_fraction, seed)
        train, val = holdout(*rest, opts.val_fraction, seed)
        shape = image_shape or (x.shape[1],)
        reshape = lambda s: None if s is None else (s[0].reshape(-1, *shape), s[1])  # noqa: E731
        norm_axis = None if image_shape else 0  # images: one scalar mean/std; tables: per column
        names = [str(n) for n in ds.target_names]
        meta = DataMeta(shape, "multiclass", len(names), names)
        return make_bundle(reshape(train), reshape(val), reshape(test), meta, opts, norm_axis)

    build.__doc__ = f"sklearn.datasets.{loader_name}, split into train/val/test by seed."
    return build


DATASETS.register("digits", SklearnOptions)(_sklearn("load_digits", image_shape=(1, 8, 8)))
DATASETS.register("iris", SklearnOptions)(_sklearn("load_iris"))
DATASETS.register("wine", SklearnOptions)(_sklearn("load_wine"))
DATASETS.register("breast_cancer", SklearnOptions)(_sklearn("load_breast_cancer"))


@DATASETS.register("diabetes", SklearnOptions)
def diabetes(opts: SklearnOptions, seed: int):
    """sklearn's diabetes regression table (442 patients, 10 features, disease progression after a year).

    The target is standardised with the train split's mean and std, like the features, so that plain
    gradient descent needs no tuning; MSE and MAE are then in units of that std, and R² is unaffected.
    `meta.extra["target_mean"]`, `["target_std"]` map predictions back to the original scale."""
    from sklearn import datasets

    ds = datasets.load_diabetes()
    x, y = ds.data.astype(np.float32), ds.target.astype(np.float32)
    rest, test = holdout(x, y, opts.test_fraction, seed, stratify=False)
    train, val = holdout(*rest, opts.val_fraction, seed, stratify=False)
    mean, std = float(train[1].mean()), float(train[1].std())
    scale = lambda s: None if s is None else (s[0], (s[1] - mean) / std)  # noqa: E731
    meta = DataMeta((x.shape[1],), "regression", extra={"target_mean": mean, "target_std": std})
    return make_bundle(scale(train), scale(val), scale(test), meta, opts)

