"""Core datasets: reproducible splits, train-only normalisation, the mnist1d cache."""
import numpy as np
import pytest
import torch

from powertrain import data


def test_splits_reproducible_from_seed():
    a, b, c = (data.build({"name": "digits"}, seed=s) for s in (0, 0, 1))
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).tensors[0], getattr(b, split).tensors[0])
    assert not torch.equal(a.test.tensors[1], c.test.tensors[1])
    assert len(a.train) + len(a.val) + len(a.test) == 1797


def test_normalisation_uses_train_statistics_only():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    raw = load_digits()
    b = data.build({"name": "digits"}, seed=0)
    x_rest, x_test = train_test_split(raw.data.astype(np.float32), test_size=0.2, random_state=0, stratify=raw.target)
    x_train, _ = train_test_split(x_rest, test_size=0.1, random_state=0,
                                  stratify=train_test_split(raw.target, test_size=0.2, random_state=0,
                                                            stratify=raw.target)[0])
    mean, std = x_train.mean(), x_train.std()  # images: one scalar statistic of the train split
    np.testing.assert_allclose(b.test.tensors[0].numpy().reshape(len(x_test), -1), (x_test - mean) / std, rtol=1e-4, atol=1e-5)
    assert abs(float(b.train.tensors[0].mean())) < 1e-5 and abs(float(b.test.tensors[0].mean())) > 1e-4


def test_tabular_normalises_per_column():
    b = data.build({"name": "wine"}, seed=0)
    x = b.train.tensors[0]
    torch.testing.assert_close(x.mean(0), torch.zeros(x.shape[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(x.shape[1]), atol=1e-4, rtol=0)


def test_mnist1d_matches_the_package_and_its_cache(tmp_path, monkeypatch):
    from mnist1d.data import get_dataset_args, make_dataset

    monkeypatch.setenv("POWERTRAIN_CACHE_DIR", str(tmp_path))
    ref = make_dataset(get_dataset_args())
    for _ in range(2):  # generated, then read from the cache
        b = data.build({"name": "mnist1d", "normalize": False, "val_fraction": 0.0}, seed=0)
        assert (tmp_path / "mnist1d-default.npz").exists()
        assert b.train.tensors[0].shape == (4000, 1, 40) and len(b.test) == 1000 and b.val is None
        np.testing.assert_array_equal(b.test.tensors[0][:, 0].numpy(), ref["x_test"].astype(np.float32))
        np.testing.assert_array_equal(b.train.tensors[1].numpy(), ref["y"])


def test_xor_is_the_four_points():
    b = data.build({"name": "xor"}, seed=0)
    assert b.train.tensors[0].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]] and b.train.tensors[1].tolist() == [0, 1, 1, 0]
    assert b.meta.task == "binary"


def test_unknown_split_is_a_clear_error():
    from powertrain.errors import RecipeError

    b = data.build({"name": "digits", "val_fraction": 0}, seed=0)
    with pytest.raises(RecipeError, match="split 'val': this dataset has no such split"):
        b.split("val")
