"""Image datasets from folders of PNG/JPEG files: one subfolder per class (or train/ and test/ above
them), read with Pillow, resized to one size. Shares the uint8 split and normalisation of images.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import Dataset

from ..errors import DataError
from .bundle import DataBundle, DataMeta, LoaderSplit, holdout
from .registry import DATASETS
from .augment import check_augment
from .images import ImageOptions, _is_identity, _take, channel_stats, image_bundle, split_train, subsample, u8_to_float

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


class ImageFolderOptions(ImageOptions):
    path: Optional[str] = None  # required (checked when built): class subfolders, or train/ and test/ (and val/) of them
    size: int | tuple[int, int] = 224  # output size: S for S x S, or (height, width)
    channels: Literal[1, 3] = 3  # 3: RGB, 1: grayscale
    fit: Literal["stretch", "crop"] = "stretch"  # stretch to size, or center-crop to its aspect ratio first
    test_fraction: float = Field(0.2, gt=0, lt=1)  # held out as test when there is no test/ subfolder


def _visible(name: str) -> bool:
    return not name.startswith(".") and name != "__pycache__"


def _class_files(root: Path) -> dict[str, list[Path]]:
    """{class name: sorted image files} for the class subfolders of `root` (nested folders included)."""
    classes = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and _visible(p.name)):
        files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                       and all(_visible(part) for part in f.relative_to(d).parts))
        if not files:
            raise DataError(f"{d}: class folder has no PNG/JPEG images; add images or remove the folder")
        classes[d.name] = files
    if not classes:
        raise DataError(f"{root}: no class subfolders; expected {root}/<class name>/<image>.png|jpg "
                        f"(or train/ and test/ folders laid out that way)")
    return classes


def load_image(path: Path, size: tuple[int, int], channels: int, fit: str) -> np.ndarray:
    """One image file -> uint8 (C, H, W) at `size` = (height, width)."""
    from PIL import Image, UnidentifiedImageError

    h, w = size
    try:
        with Image.open(path) as im:
            im.draft("RGB" if channels == 3 else "L", (w, h))  # JPEG: decode at reduced scale when much larger
            im = im.convert("RGB" if channels == 3 else "L")
            if fit == "crop":
                scale = min(im.width / w, im.height / h)
                cw, ch = round(w * scale), round(h * scale)
                left, top = (im.width - cw) // 2, (im.height - ch) // 2
                im = im.crop((left, top, left + cw, top + ch))
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            arr = np.array(im, dtype=np.uint8)  # a writable copy
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot be read as an image ({err}); remove or replace the file") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


class _FolderDataset(Dataset):
    """Decode lazily, for `in_memory: false`: one file per sample, in DataLoader workers."""

    def __init__(self, files, labels, size, channels, fit, mean, std):
        self.files, self.labels, self.args, self.identity = files, labels, (size, channels, fit), _is_identity(mean, std)
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        x = u8_to_float(torch.from_numpy(load_image(self.files[i], *self.args)), self.mean, self.std, self.identity)
        return x, torch.tensor(int(self.labels[i]))


STATS_SAMPLES = 2000  # lazy folders: normalisation statistics from at most this many train images


@DATASETS.register("image-folder", ImageFolderOptions)
def image_folder(opts: ImageFolderOptions, seed: int) -> DataBundle:
    """Folders of PNG/JPEG, one subfolder per class, resized to `size`; split by train/ test/ or by fraction."""
    if opts.path is None:  # optional in the schema so that recipes such as image224-cnn parse without one
        raise DataError("image-folder: data.path is not set; set data.path=DIR, where DIR has one subfolder of "
                        "PNG/JPEG images per class (or train/ and test/ folders laid out that way)")
    root = Path(opts.path).expanduser()
    if not root.is_dir():
        raise DataError(f"image-folder: {root} is not a directory; set data.path to a folder with one subfolder "
                        f"of PNG/JPEG images per class")
    size = (opts.size, opts.size) if isinstance(opts.size, int) else tuple(opts.size)
    has_split = (root / "train").is_dir() and any(p.is_dir() for p in (root / "train").iterdir())

    def flat(classes: dict[str, list[Path]], names: list[str], where: Path):
        files, labels = [], []
        for name, fs in classes.items():
            if name not in names:
                raise DataError(f"{where / name}: class '{name}' is not among the train classes "
                                f"({', '.join(names)}); add it to train/ or remove it")
            files += fs
            labels += [names.index(name)] * len(fs)
        return np.array(files, dtype=object), np.array(labels, dtype=np.int64)

    if has_split:
        train_classes = _class_files(root / "train")
        names = list(train_classes)
        train = flat(train_classes, names, root / "train")
        test = flat(_class_files(root / "test"), names, root / "test") if (root / "test").is_dir() else None
        val = flat(_class_files(root / "val"), names, root / "val") if (root / "val").is_dir() else None
    else:
        classes = _class_files(root)
        names = list(classes)
        everything = flat(classes, names, root)
        rest, test = holdout(*everything, opts.test_fraction, seed)
        train, val = rest, None
    if val is None:
        tr, va = split_train(train[1], opts, seed)
        train, val = _take(train, tr), _take(train, va)
    else:
        train = _take(train, subsample(train[1], opts.train_limit, seed))
    if test is not None:
        test = _take(test, subsample(test[1], opts.test_limit, seed))
    extra = {"path": str(root), "layout": "train/test folders" if has_split else "class folders, split by seed"}
    args = (size, opts.channels, opts.fit)

    if not opts.in_memory:
        stats = None
        if opts.normalize:
            pick = np.sort(np.random.default_rng(seed).permutation(len(train[0]))[:STATS_SAMPLES])
            stats = channel_stats(np.stack([load_image(f, *args) for f in train[0][pick]]))
            extra["normalization_samples"] = len(pick)
        mean, std = stats or (np.zeros(opts.channels, np.float32), np.ones(opts.channels, np.float32))
        lazy = lambda s: None if s is None else LoaderSplit(_FolderDataset(s[0], s[1], *args, mean, std),  # noqa: E731
                                                            opts.num_workers)
        check_augment(opts.augment, (opts.channels, *size))
        meta = DataMeta((opts.channels, *size), "multiclass", len(names), names, extra,
                        normalization={"mean": mean.tolist(), "std": std.tolist()}, augment=opts.augment)
        return DataBundle(lazy(train), lazy(val), lazy(test), meta)

    def decode(s):
        if s is None:
            return None
        images = np.empty((len(s[0]), opts.channels, *size), np.uint8)
        for i, f in enumerate(s[0]):
            images[i] = load_image(f, *args)
        return images, s[1]

    return image_bundle(decode(train), decode(val), decode(test), names, opts, extra)
