"""CIFAR-10 (binary and Python versions) and image folders (PNG/JPEG through Pillow)."""
import pickle

import numpy as np
import pytest
import torch

from datafiles import write_cifar_bin, write_cifar_pickle, write_image, write_image_folder
from powertrain import data
from powertrain.errors import DataError


def all_of(split):
    return next(split.batches(torch.arange(len(split)), len(split)))


# ------------------------------------------------------------------ CIFAR-10
def test_cifar_binary_round_trips_channels_and_labels(tmp_path):
    written = write_cifar_bin(tmp_path / "cifar-10-batches-bin")
    b = data.build({"name": "cifar10", "path": str(tmp_path), "val_fraction": 0, "normalize": False}, seed=0)
    assert b.meta.input_shape == (3, 32, 32) and b.meta.class_names[0] == "airplane" and b.meta.extra["format"] == "bin"
    x, y = all_of(b.train)
    images = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert torch.equal(x, torch.from_numpy(images).float() / 255) and torch.equal(y, torch.from_numpy(labels).long())
    # the record layout: byte 1..1024 is the red plane, row by row
    raw = (tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin").read_bytes()
    assert x[0, 0].flatten().mul(255).round().to(torch.uint8).tolist() == list(raw[1:1025])
    assert x[0, 2, 0, 5].item() * 255 == pytest.approx(raw[1 + 2048 + 5])
    xt, yt = all_of(b.test)
    assert torch.equal(xt, torch.from_numpy(written["test_batch"][0]).float() / 255)


def test_cifar_normalises_per_channel_with_train_statistics(tmp_path):
    write_cifar_bin(tmp_path)
    b = data.build({"name": "cifar10", "path": str(tmp_path), "val_fraction": 0.2}, seed=0)
    x, _ = all_of(b.train)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    assert len(b.meta.normalization["mean"]) == 3


def test_cifar_class_names_from_batches_meta(tmp_path):
    write_cifar_bin(tmp_path)
    (tmp_path / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n\n")
    assert data.build({"name": "cifar10", "path": str(tmp_path)}, seed=0).meta.class_names[3] == "c3"


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_python_version_through_the_restricted_unpickler(tmp_path, protocol):
    written = write_cifar_pickle(tmp_path / "cifar-10-batches-py", protocol=protocol)
    b = data.build({"name": "cifar10", "path": str(tmp_path), "val_fraction": 0, "normalize": False}, seed=0)
    assert b.meta.extra["format"] == "py"
    x, y = all_of(b.test)
    assert torch.equal(x, torch.from_numpy(written["test_batch"][0]).float() / 255)
    assert torch.equal(y, torch.from_numpy(written["test_batch"][1]).long())


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_cifar_pickle_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_cifar_pickle(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match=r"data_batch_3.*is not allowed") as e:
        data.build({"name": "cifar10", "path": str(tmp_path)}, seed=0)
    assert not (tmp_path / "pwned").exists() and str(tmp_path / "data_batch_3") in str(e.value)


def test_cifar_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-bin") as e:
        data.build({"name": "cifar10", "path": str(tmp_path)}, seed=0)
    assert str(tmp_path) in str(e.value)
    write_cifar_bin(tmp_path)
    bad = tmp_path / "data_batch_4.bin"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(DataError, match="not a whole number of 3073-byte records") as e:
        data.build({"name": "cifar10", "path": str(tmp_path)}, seed=0)
    assert str(bad) in str(e.value)
    bad.unlink()
    with pytest.raises(DataError, match=r"data_batch_4\.bin is missing"):
        data.build({"name": "cifar10", "path": str(tmp_path)}, seed=0)


# ------------------------------------------------------------------ image folders
def test_png_folder_round_trips_at_native_size(tmp_path):
    written = write_image_folder(tmp_path, size=(8, 10))
    b = data.build({"name": "image-folder", "path": str(tmp_path), "size": [8, 10], "normalize": False,
                    "val_fraction": 0, "test_fraction": 0.5}, seed=0)
    assert b.meta.class_names == ["cat", "dog", "fish"] and b.meta.input_shape == (3, 8, 10)
    assert len(b.train) == 9 and len(b.test) == 9
    assert torch.bincount(b.test.labels).tolist() == [3, 3, 3]  # stratified
    expected = {arr.tobytes(): ["cat", "dog", "fish"].index(p.parent.name) for p, arr in written.items()}
    for split in (b.train, b.test):
        x, y = all_of(split)
        for xi, yi in zip(x, y):
            key = (xi * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy().tobytes()
            assert expected[key] == yi.item()  # every image exactly, under its own class


def test_folder_resizes_converts_and_reads_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    write_image(tmp_path / "a" / "gray.png", rng.integers(0, 256, (40, 30), dtype=np.uint8))  # L mode
    write_image(tmp_path / "a" / "x.jpg", np.full((50, 70, 3), 200, np.uint8))
    write_image(tmp_path / "b" / "rgba.png", np.full((20, 20, 4), 100, np.uint8))
    write_image(tmp_path / "b" / "y.JPEG", np.full((64, 64, 3), 30, np.uint8))
    (tmp_path / "b" / "notes.txt").write_text("not an image, ignored")
    b = data.build({"name": "image-folder", "path": str(tmp_path), "size": 16, "normalize": False,
                    "val_fraction": 0, "test_fraction": 0.5}, seed=0)
    x, _ = all_of(b.train)
    assert x.shape[1:] == (3, 16, 16)
    g = data.build({"name": "image-folder", "path": str(tmp_path), "size": 12, "channels": 1, "fit": "crop",
                    "test_fraction": 0.5, "val_fraction": 0}, seed=0)
    assert g.meta.input_shape == (1, 12, 12)
    solid = data.build({"name": "image-folder", "path": str(tmp_path), "size": 16, "normalize": False,
                        "val_fraction": 0, "test_fraction": 0.5}, seed=0)
    x = torch.cat([all_of(solid.train)[0], all_of(solid.test)[0]]) * 255
    lo, hi = x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))
    for value in (200, 100, 30):  # solid colours survive conversion and resizing (JPEG: within 1)
        assert any(abs(a - value) <= 1 and abs(b - value) <= 1 for a, b in zip(lo.tolist(), hi.tolist()))


def test_train_test_subfolders_and_lazy_loading(tmp_path):
    write_image_folder(tmp_path / "train", classes=("a", "b"), per_class=8, size=(6, 6), seed=1)
    write_image_folder(tmp_path / "test", classes=("a", "b"), per_class=3, size=(6, 6), seed=2)
    opts = {"name": "image-folder", "path": str(tmp_path), "size": 6, "val_fraction": 0.25}
    mem = data.build(opts, seed=0)
    assert (len(mem.train), len(mem.val), len(mem.test)) == (12, 4, 6)
    assert mem.meta.extra["layout"] == "train/test folders"
    lazy = data.build({**opts, "in_memory": False}, seed=0)
    for split in ("train", "val", "test"):
        xa, ya = all_of(getattr(mem, split))
        xb, yb = all_of(getattr(lazy, split))
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    again = data.build(opts, seed=0)
    other = data.build(opts, seed=5)
    assert torch.equal(again.val.images, mem.val.images) and not torch.equal(other.val.images, mem.val.images)


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        data.build({"name": "image-folder", "path": str(tmp_path / "none")}, seed=0)
    write_image_folder(tmp_path, per_class=3, size=(4, 4))
    broken = tmp_path / "dog" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(DataError, match="cannot be read as an image") as e:
        data.build({"name": "image-folder", "path": str(tmp_path), "size": 4}, seed=0)
    assert str(broken) in str(e.value)
    broken.unlink()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="class folder has no PNG/JPEG images") as e:
        data.build({"name": "image-folder", "path": str(tmp_path), "size": 4}, seed=0)
    assert str(tmp_path / "empty") in str(e.value)
