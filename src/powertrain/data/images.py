"""Image datasets: MNIST and Fashion-MNIST (IDX files) and CIFAR-10 (binary or Python version); folders
of PNG/JPEG files are in folders.py.

Images are kept as uint8 (N, C, H, W) and turned into float per batch on the training device:
scaled to [0, 1], then (with `normalize`, the default) standardised per channel with the mean and
std of the train split only. Those statistics are in `meta.normalization`, so a picture
can be turned back into pixels: `pixels = x * std + mean`.

>>> from powertrain import data
>>> bundle = data.build({"name": "fashion-mnist", "train_limit": 1000}, seed=0)  # doctest: +SKIP
>>> bundle.meta.input_shape, len(bundle.train), len(bundle.test)  # doctest: +SKIP
((1, 28, 28), 1000, 10000)
"""
from __future__ import annotations

import gzip
import importlib
import pickle
import struct
import zlib
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import Dataset

from ..errors import DataError
from .bundle import DataBundle, DataMeta, DataOptions, LoaderSplit, holdout
from .registry import DATASETS
from .augment import AugmentOptions, check_augment


def data_root() -> Path:
    """Where downloaded datasets are looked for by default: $POWERTRAIN_DATA, else ~/.cache/powertrain/datasets."""
    from ..settings import data_dir

    return data_dir()


class ImageOptions(DataOptions):
    path: Optional[str] = None  # directory of the files (default: the dataset's usual places, see docs/data.md)
    train_limit: Optional[int] = Field(None, ge=1)  # keep this many train samples (seeded, stratified by class)
    test_limit: Optional[int] = Field(None, ge=1)  # keep this many test samples (quick runs only: not the published split)
    augment: Optional[AugmentOptions] = None  # batched augmentation of training batches, applied by the trainer


# ---------------------------------------------------------------- the split: uint8 on the device
def u8_to_float(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, identity: bool) -> torch.Tensor:
    """uint8 -> float32 `(u8 / 255 - mean) / std`, `mean`/`std` broadcastable per channel: exactly u8 / 255
    when `identity` (mean 0, std 1), else one fused multiply-add (the same bits on every path)."""
    if identity:
        return images.float().div_(255)
    return torch.addcmul(-mean / std, images.float(), 1 / (255 * std))


def _is_identity(mean, std) -> bool:
    return bool((np.asarray(mean) == 0).all() and (np.asarray(std) == 1).all())


class ImageSplit:
    """Images as uint8 (N, C, H, W) plus labels; each batch is `((u8 / 255 - mean) / std, labels)` in float32.

    Keeping uint8 costs a quarter of the memory of float32 and one fused conversion per batch.
    `tensors` gives the whole split as float (x, y), like `TensorSplit.tensors`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
        assert images.dtype == torch.uint8 and images.dim() == 4 and len(images) == len(labels)
        dense = torch.empty(images.shape, dtype=images.dtype, device="meta").stride()
        if images.stride() != dense:  # e.g. (784, 0, 28, 1) from numpy's arr[:, None]: convs would take it for
            images = images.clone(memory_format=torch.contiguous_format)  # channels_last, and x.view(...) would fail
        self.images, self.labels = images, labels
        self.mean, self.std = mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)
        self.identity = _is_identity(mean.cpu(), std.cpu())  # once here, not a device sync per batch

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device) -> "ImageSplit":
        return ImageSplit(self.images.to(device), self.labels.to(device), self.mean.to(device), self.std.to(device))

    def batches(self, order: torch.Tensor, batch_size: int, start: int = 0) -> Iterator[tuple]:
        order = order.to(self.images.device)
        for i in range(start * batch_size, len(order), batch_size):
            idx = order[i : i + batch_size]
            yield u8_to_float(self.images.index_select(0, idx), self.mean, self.std, self.identity), self.labels[idx]

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return u8_to_float(self.images, self.mean, self.std, self.identity), self.labels


class _ImageDataset(Dataset):
    """The same conversion per sample, for `in_memory: false` (a DataLoader with workers)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: np.ndarray, std: np.ndarray):
        self.images, self.labels, self.identity = images, labels, _is_identity(mean, std)
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        x = u8_to_float(torch.from_numpy(self.images[i]), self.mean, self.std, self.identity)
        return x, torch.tensor(int(self.labels[i]))


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and (population) std of uint8 (N, C, H, W) images scaled to [0, 1],
    from a 256-bin histogram per channel (no float copy of the images)."""
    levels = np.arange(256, dtype=np.float64) / 255
    mean, std = [], []
    for c in range(images.shape[1]):
        counts = np.bincount(np.ascontiguousarray(images[:, c]).ravel(), minlength=256).astype(np.float64)
        n = counts.sum()
        m = (counts * levels).sum() / n
        var = max((counts * levels**2).sum() / n - m * m, 0.0)
        mean.append(m)
        std.append(np.sqrt(var) if var > 0 else 1.0)
    return np.array(mean, np.float32), np.array(std, np.float32)


def subsample(labels: np.ndarray, n: Optional[int], seed: int) -> np.ndarray:
    """Sorted indices of `n` samples drawn by `seed`, stratified by label where every class can be."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    _, counts = np.unique(labels, return_counts=True)
    strat = labels if counts.min() >= 2 and len(counts) <= n <= len(labels) - len(counts) else None
    idx, _ = train_test_split(np.arange(len(labels)), train_size=n, random_state=seed, stratify=strat)
    return np.sort(idx)


def split_train(labels: np.ndarray, opts: ImageOptions, seed: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(train indices, val indices or None): val held out by `val_fraction`, then train cut to `train_limit`.
    Val does not depend on `train_limit`, so runs with different limits are compared on the same val."""
    idx = np.arange(len(labels))
    (tr, _), val = holdout(idx, labels, opts.val_fraction, seed)
    tr = np.sort(tr)
    tr = tr[subsample(labels[tr], opts.train_limit, seed)]
    return tr, None if val is None else np.sort(val[0])


def image_bundle(train, val, test, class_names: Sequence[str], opts: ImageOptions, extra: Optional[dict] = None,
                 stats: Optional[tuple[np.ndarray, np.ndarray]] = None) -> DataBundle:
    """uint8 (images, labels) pairs -> ImageSplits (or LoaderSplits) normalised with train statistics."""
    channels = train[0].shape[1]
    if opts.normalize:
        mean, std = stats if stats is not None else channel_stats(train[0])
    else:
        mean, std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    check_augment(opts.augment, tuple(train[0].shape[1:]))

    def split(s):
        if s is None:
            return None
        if not opts.in_memory:
            return LoaderSplit(_ImageDataset(s[0], s[1], mean, std), opts.num_workers)
        return ImageSplit(torch.from_numpy(np.ascontiguousarray(s[0])), torch.from_numpy(s[1].astype(np.int64)),
                          torch.from_numpy(mean), torch.from_numpy(std))

    meta = DataMeta(tuple(train[0].shape[1:]), "multiclass", len(class_names), list(class_names), dict(extra or {}),
                    normalization={"mean": mean.tolist(), "std": std.tolist()}, augment=opts.augment)
    return DataBundle(split(train), split(val), split(test), meta)


def _take(s: tuple[np.ndarray, np.ndarray], idx: Optional[np.ndarray]):
    return None if idx is None else (s[0][idx], s[1][idx])


def _finish(train, test, class_names, opts: ImageOptions, seed: int, extra: dict) -> DataBundle:
    """Hold out val, apply the limits, and build the bundle."""
    tr, va = split_train(train[1], opts, seed)
    test = _take(test, subsample(test[1], opts.test_limit, seed)) if test is not None else None
    return image_bundle(_take(train, tr), _take(train, va), test, class_names, opts, extra)


# ---------------------------------------------------------------- IDX: MNIST and Fashion-MNIST
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":  # not gzip (whatever the name says)
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a readable gzip file ({err}); the download is truncated or corrupt: "
                        f"fetch the file again") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0x00 0x00 <type> <ndim>, big-endian uint32 sizes, data."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in IDX_DTYPES or data[3] == 0:
        raise DataError(f"{path}: not an IDX file (magic bytes {data[:4].hex() or 'missing'}, expected 0000 then a "
                        f"type byte such as 08 and the number of dimensions); replace it with the original IDX file")
    ndim, dtype = data[3], np.dtype(IDX_DTYPES[data[2]])
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: IDX header is cut short ({len(data)} bytes, expected {header}); fetch the file again")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{path}: {len(data)} bytes, but an IDX array of shape {dims} needs {expected}; "
                        f"the file is truncated or corrupt: fetch it again")
    return np.frombuffer(data, dtype, offset=header).reshape(dims)


IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find_idx(directory: Path, stem: str) -> Optional[Path]:
    """`stem`, `stem.gz`, or the variants with a dot (train-images.idx3-ubyte) some mirrors use."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (directory / name).is_file():
            return directory / name
    return None


def load_idx_pair(directory: Path, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 1, 28, 28), labels int64 (N,)) of `split` from the IDX files in `directory`."""
    images_stem, labels_stem = IDX_FILES[split]
    paths = [_find_idx(directory, s) for s in (images_stem, labels_stem)]
    for p, stem in zip(paths, (images_stem, labels_stem)):
        if p is None:
            raise DataError(f"{name}: {directory / stem}[.gz] is missing; put the four IDX files "
                            f"({', '.join(s for pair in IDX_FILES.values() for s in pair)}, gzipped or not) in {directory}")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{paths[0]}: holds an array of shape {images.shape} and type {images.dtype}, expected "
                        f"uint8 images of shape (N, 28, 28); is it a labels file or another dataset's file?")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{paths[1]}: holds an array of shape {labels.shape} and type {labels.dtype}, expected "
                        f"uint8 labels of shape (N,); is it an images file?")
    if len(labels) != len(images):
        raise DataError(f"{paths[1]}: {len(labels)} labels for {len(images)} images in {paths[0].name}; "
                        f"the two files must come from the same split and release")
    if labels.max(initial=0) > 9:
        raise DataError(f"{paths[1]}: label {int(labels.max())} found, expected 0..9; the file is not {name}")
    return images[:, None, :, :], labels.astype(np.int64)


def _pick_dir(name: str, given: Optional[str], defaults: Sequence[Path], marker, how_to_get: str) -> Path:
    """The given directory, or the first default where `marker(dir)` holds; else a DataError saying where we looked."""
    candidates = [Path(given).expanduser()] if given else list(defaults)
    for d in candidates:
        if d.is_dir() and marker(d):
            return d
    if given:
        where = f"{candidates[0]}" + ("" if candidates[0].is_dir() else " (no such directory)")
    else:
        where = " or ".join(str(d) for d in candidates)
    raise DataError(f"{name}: no {name} files in {where}; {how_to_get}")


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def _idx_dataset(name: str, defaults, how_to_get, class_names: list[str]):
    """A builder for one IDX dataset; `defaults()` and `how_to_get()` are read at build time ($POWERTRAIN_DATA)."""

    def build(opts: ImageOptions, seed: int) -> DataBundle:
        has_train = lambda d: _find_idx(d, IDX_FILES["train"][0]) is not None  # noqa: E731
        directory = _pick_dir(name, opts.path, defaults(), has_train, how_to_get())
        train, test = load_idx_pair(directory, "train", name), load_idx_pair(directory, "test", name)
        return _finish(train, test, class_names, opts, seed, {"path": str(directory)})

    build.__doc__ = f"{name}: 28x28 grayscale IDX files, 10 classes; val held out of train by seed."
    return build


_FOUR = "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"
DATASETS.register("fashion-mnist", ImageOptions)(_idx_dataset(
    "fashion-mnist", lambda: [data_root() / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist")],
    lambda: (f"install them with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four "
             f"IDX files ({_FOUR}) in a directory and set data.path to it"), FASHION_CLASSES))
DATASETS.register("mnist", ImageOptions)(_idx_dataset(
    "mnist", lambda: [data_root() / "mnist", Path("/usr/share/datasets/mnist")],
    lambda: (f"put the four MNIST IDX files ({_FOUR}) in {data_root() / 'mnist'} (or any directory, and set "
             f"data.path to it)"), [str(i) for i in range(10)]))


# ---------------------------------------------------------------- CIFAR-10
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte, then 1024 red, 1024 green, 1024 blue bytes, rows top to bottom


def read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
    if not path.is_file():
        raise DataError(f"cifar10: {path} is missing; the binary version has data_batch_1.bin .. data_batch_5.bin "
                        f"and test_batch.bin: extract all of cifar-10-binary.tar.gz into {path.parent}")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of {CIFAR_RECORD}-byte records (1 label byte + "
                        f"3072 pixel bytes); the file is truncated or not CIFAR-10 binary: extract it again")
    records = raw.reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(f"{path}: label {int(labels.max())} found, expected 0..9; is this CIFAR-100 "
                        f"(2 label bytes per record)? Only CIFAR-10 is supported")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


_NUMPY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                  ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                  ("numpy", "ndarray"), ("numpy", "dtype"),
                  ("_codecs", "encode")}  # how protocol-2 pickles written by Python 3 store bytes


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds plain containers and numpy arrays, and refuses every other global
    (a pickle can otherwise run any code while loading)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed (numpy arrays and plain data only)")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.split(".", 2)[2]  # numpy 2 renamed numpy.core
        return getattr(importlib.import_module(module), name)


def read_cifar_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch of the CIFAR-10 Python version, through `NumpyOnlyUnpickler`."""
    if not path.is_file():
        raise DataError(f"cifar10: {path} is missing; the Python version has data_batch_1 .. data_batch_5 and "
                        f"test_batch: extract all of cifar-10-python.tar.gz into {path.parent}")
    try:
        with path.open("rb") as f:
            obj = NumpyOnlyUnpickler(f, encoding="latin1").load()
    except Exception as err:  # noqa: BLE001 - any failure here means a bad file
        raise DataError(f"{path}: cannot be read as a CIFAR-10 Python batch ({err}); use the binary version "
                        f"(data_batch_*.bin) or extract the file again") from None
    get = lambda d, k: d.get(k, d.get(k.encode())) if isinstance(d, dict) else None  # noqa: E731
    data, labels = get(obj, "data"), get(obj, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
            or labels is None or len(labels) != len(data):
        raise DataError(f"{path}: expected a dict with 'data' (uint8, N x 3072) and 'labels' (N ints); "
                        f"this is not a CIFAR-10 Python batch")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DataError(f"{path}: labels outside 0..9; this is not CIFAR-10")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_layout(d: Path) -> Optional[tuple[Path, str]]:
    for sub in (d, d / "cifar-10-batches-bin", d / "cifar-10-batches-py"):
        if (sub / "data_batch_1.bin").is_file():
            return sub, "bin"
        if (sub / "data_batch_1").is_file():
            return sub, "py"
    return None


def _cifar_classes(d: Path) -> list[str]:
    meta = d / "batches.meta.txt"
    if meta.is_file():
        names = [s.strip() for s in meta.read_text(errors="replace").splitlines() if s.strip()]
        if len(names) == 10:
            return names
    return list(CIFAR10_CLASSES)


@DATASETS.register("cifar10", ImageOptions)
def cifar10(opts: ImageOptions, seed: int) -> DataBundle:
    """CIFAR-10: 32x32 RGB, 10 classes, binary (data_batch_*.bin) or Python version; val held out of train."""
    defaults = [data_root() / "cifar10", Path("/usr/share/datasets/cifar10")]
    how = ("extract cifar-10-binary.tar.gz (the CIFAR-10 binary version) and set data.path to its "
           f"cifar-10-batches-bin directory, or put it in {defaults[0]}")
    d = _pick_dir("cifar10", opts.path, defaults, lambda p: _cifar_layout(p) is not None, how)
    d, fmt = _cifar_layout(d)
    read, ext = (read_cifar_bin, ".bin") if fmt == "bin" else (read_cifar_pickle, "")
    parts = [read(d / f"data_batch_{i}{ext}") for i in range(1, 6)]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = read(d / f"test_batch{ext}")
    return _finish(train, test, _cifar_classes(d), opts, seed, {"path": str(d), "format": fmt})
