"""Writers of small files in the real formats (IDX, CIFAR-10 binary and Python pickles, PNG/JPEG folders,
CSV, JSONL, text), so that the tests read them through `powertrain.data.build` like users do."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: 0x00 0x00 0x08 ndim, big-endian sizes, data."""
    assert arr.dtype == np.uint8
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(arr)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_idx_images(n: int, seed: int, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % classes).astype(np.uint8)


def write_idx_dataset(d: Path, n_train: int = 60, n_test: int = 20, gz: bool = True, seed: int = 0):
    """Four IDX files in `d`; returns {"train": (images, labels), "test": (...)} as written."""
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        images, labels = make_idx_images(n, seed + k)
        write_idx(d / IDX_NAMES[split][0], images, gz)
        write_idx(d / IDX_NAMES[split][1], labels, gz)
        out[split] = (images, labels)
    return out


def cifar_records(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def write_cifar_bin(d: Path, n_per_batch: int = 12, seed: int = 0):
    """data_batch_1..5.bin and test_batch.bin: each record is 1 label byte + R, G, B planes of 32x32."""
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        images, labels = cifar_records(n_per_batch, seed + k)
        records = np.concatenate([labels[:, None], images.reshape(n_per_batch, -1)], axis=1)
        (d / f"{name}.bin").write_bytes(records.astype(np.uint8).tobytes())
        out[name] = (images, labels)
    return out


def write_cifar_pickle(d: Path, n_per_batch: int = 12, seed: int = 0, protocol: int = 2):
    """The Python version: pickled dicts {b'data': uint8 (N, 3072), b'labels': [..], ...} per batch."""
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        images, labels = cifar_records(n_per_batch, seed + k)
        obj = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
               b"data": images.reshape(n_per_batch, -1), b"filenames": [b"x.png"] * n_per_batch}
        (d / name).write_bytes(pickle.dumps(obj, protocol=protocol))
        out[name] = (images, labels)
    return out


def write_image(path: Path, arr: np.ndarray) -> None:
    """(H, W, 3) or (H, W) uint8 -> an image file; the format follows the suffix."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_image_folder(root: Path, classes=("cat", "dog", "fish"), per_class: int = 6, size=(8, 10), seed: int = 0):
    """root/<class>/<i>.png with random pixels; returns {path: (H, W, 3) array}."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in classes:
        for i in range(per_class):
            arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            path = root / c / f"{i:03d}.png"
            write_image(path, arr)
            out[path] = arr
    return out
