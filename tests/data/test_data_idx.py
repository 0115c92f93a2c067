"""MNIST / Fashion-MNIST from IDX files (gzipped and plain), through `data.build` as users call it."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from datafiles import IDX_NAMES, idx_bytes, write_idx_dataset
from powertrain import TrainConfig, Trainer, data
from powertrain.data.images import ImageSplit
from powertrain.errors import DataError


def all_of(split):
    x, y = next(split.batches(torch.arange(len(split)), len(split)))
    return x, y


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_values_round_trip_exactly(tmp_path, gz, name):
    written = write_idx_dataset(tmp_path, gz=gz)
    b = data.build({"name": name, "path": str(tmp_path), "val_fraction": 0, "normalize": False}, seed=0)
    assert b.val is None and b.meta.input_shape == (1, 28, 28) and b.meta.num_classes == 10
    for split, (images, labels) in (("train", written["train"]), ("test", written["test"])):
        x, y = all_of(getattr(b, split))
        assert x.dtype == torch.float32 and x.shape == (len(images), 1, 28, 28)
        assert torch.equal(x, torch.from_numpy(images).float().div(255)[:, None])
        assert torch.equal(y, torch.from_numpy(labels).long())
        assert x.min() >= 0 and x.max() <= 1


def test_dotted_file_names_are_found(tmp_path):
    write_idx_dataset(tmp_path, gz=False)
    for p in tmp_path.iterdir():
        p.rename(p.with_name(p.name.replace("-idx", ".idx")))  # train-images.idx3-ubyte, as some mirrors name them
    b = data.build({"name": "mnist", "path": str(tmp_path)}, seed=0)
    assert len(b.test) == 20


def test_normalisation_statistics_come_from_the_train_split_only(tmp_path):
    written = write_idx_dataset(tmp_path, n_train=80, n_test=30)
    # make the test split extreme: if it leaked into the statistics the mean would move
    images, labels = written["test"]
    for p in IDX_NAMES["test"][:1]:
        (tmp_path / (p + ".gz")).write_bytes(gzip.compress(idx_bytes(np.full_like(images, 255))))
    b = data.build({"name": "fashion-mnist", "path": str(tmp_path), "val_fraction": 0.25}, seed=3)
    train_u8 = b.train.images.double() / 255  # the train split after the val hold-out
    mean, std = b.meta.normalization["mean"][0], b.meta.normalization["std"][0]
    assert mean == pytest.approx(train_u8.mean().item(), abs=1e-6)
    assert std == pytest.approx(train_u8.std(unbiased=False).item(), abs=1e-6)
    all_train = torch.from_numpy(written["train"][0]).double() / 255
    assert abs(mean - all_train.mean().item()) > 1e-6  # val (held out of train) is not in the statistics
    x, _ = all_of(b.train)
    assert x.mean().item() == pytest.approx(0, abs=1e-5) and x.std(unbiased=False).item() == pytest.approx(1, abs=1e-4)
    xt, _ = all_of(b.test)  # all-255 test images, normalised with the train statistics
    assert torch.allclose(xt, torch.full_like(xt, (1 - mean) / std))


def test_splits_are_reproducible_from_the_seed(tmp_path):
    write_idx_dataset(tmp_path, n_train=100)
    build = lambda seed: data.build({"name": "mnist", "path": str(tmp_path), "val_fraction": 0.2}, seed=seed)  # noqa: E731
    a, b, c = build(1), build(1), build(2)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.val.images, c.val.images)
    assert len(a.train) == 80 and len(a.val) == 20
    assert torch.bincount(a.val.labels).tolist() == [2] * 10  # stratified


def test_train_limit_is_seeded_stratified_and_leaves_val_alone(tmp_path):
    write_idx_dataset(tmp_path, n_train=200)
    opts = {"name": "fashion-mnist", "path": str(tmp_path), "val_fraction": 0.1}
    full = data.build(opts, seed=0)
    a = data.build({**opts, "train_limit": 50}, seed=0)
    b = data.build({**opts, "train_limit": 50}, seed=0)
    c = data.build({**opts, "train_limit": 50}, seed=1)
    assert len(a.train) == 50 and torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, c.train.images)
    assert torch.bincount(a.train.labels).tolist() == [5] * 10
    assert torch.equal(a.val.images, full.val.images)  # the same val whatever the limit
    rows = {bytes(r) for r in full.train.images.flatten(1).numpy()}
    assert all(bytes(r) in rows for r in a.train.images.flatten(1).numpy())  # a subset of the train split
    t = data.build({**opts, "test_limit": 10}, seed=0)
    assert len(t.test) == 10 and torch.bincount(t.test.labels).tolist() == [1] * 10


def test_dataloader_path_gives_the_same_batches(tmp_path):
    write_idx_dataset(tmp_path)
    mem = data.build({"name": "mnist", "path": str(tmp_path)}, seed=0)
    lazy = data.build({"name": "mnist", "path": str(tmp_path), "in_memory": False}, seed=0)
    assert not isinstance(lazy.train, ImageSplit)
    order = torch.randperm(len(mem.train), generator=torch.Generator().manual_seed(0))
    for (xa, ya), (xb, yb) in zip(mem.train.batches(order, 16, 1), lazy.train.batches(order, 16, 1)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)  # the same bits


def test_trains_through_the_trainer_with_augmentation_options(tmp_path):
    write_idx_dataset(tmp_path)
    b = data.build({"name": "fashion-mnist", "path": str(tmp_path),
                    "augment": {"crop_padding": 2, "hflip": True}}, seed=0)
    assert b.meta.augment.crop_padding == 2
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    t = Trainer(model, b, TrainConfig(max_steps=3, batch_size=16, device="cpu"), callbacks=[]).fit()
    assert 0 <= t.evaluate("test")["accuracy"] <= 1


# ------------------------------------------------------------------ errors name the file and the fix
def test_missing_directory_says_where_it_looked_and_how_to_get_the_files(tmp_path):
    with pytest.raises(DataError) as e:
        data.build({"name": "fashion-mnist", "path": str(tmp_path / "nowhere")}, seed=0)
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "train-images-idx3-ubyte" in msg and "\n" not in msg
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        data.build({"name": "fashion-mnist", "path": str(tmp_path)}, seed=0)


def test_missing_single_file_is_named(tmp_path):
    write_idx_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\] is missing"):
        data.build({"name": "mnist", "path": str(tmp_path)}, seed=0)


@pytest.mark.parametrize("damage, expect", [
    (lambda raw: b"\x00\x00\x99\x03" + raw[4:], "not an IDX file"),   # unknown type byte
    (lambda raw: raw[:-5], "truncated or corrupt"),                  # cut short
    (lambda raw: b"PK\x03\x04" + raw[4:], "not an IDX file"),       # a zip, not IDX
])
def test_malformed_idx_is_named(tmp_path, damage, expect):
    write_idx_dataset(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(DataError, match=expect) as e:
        data.build({"name": "mnist", "path": str(tmp_path)}, seed=0)
    assert str(p) in str(e.value)


def test_truncated_gzip_and_swapped_files_are_named(tmp_path):
    write_idx_dataset(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="gzip") as e:
        data.build({"name": "mnist", "path": str(tmp_path)}, seed=0)
    assert str(p) in str(e.value)
    p.write_bytes(raw)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(7, np.uint8))))
    with pytest.raises(DataError, match="7 labels for 60 images"):
        data.build({"name": "mnist", "path": str(tmp_path)}, seed=0)
    labels.write_bytes(raw)  # an images file where labels belong
    with pytest.raises(DataError, match="expected uint8 labels"):
        data.build({"name": "mnist", "path": str(tmp_path)}, seed=0)


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_the_debian_package():
    b = data.build({"name": "fashion-mnist", "val_fraction": 0}, seed=0)
    assert (len(b.train), len(b.test)) == (60000, 10000)
    assert torch.bincount(b.train.labels).tolist() == [6000] * 10
    assert b.meta.class_names[9] == "Ankle boot"
    assert b.meta.normalization["mean"][0] == pytest.approx(0.2860, abs=1e-3)  # the published figure
