"""One atomic writer for every file of a run directory: temp file, fsync of the file, rename, fsync
of the folder; and the same for a whole folder (a checkpoint). A kill at any moment leaves either the
old or the new version, never a half-written one."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` into a temp file beside `path`, fsync it, rename it over `path`, fsync the folder.
    A failure (or kill) leaves the old `path` whole; the temp file is removed on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_path(path.parent)


def atomic_folder(final: Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` into a temp folder beside `final`, fsync every file and the folder, then put it in
    place of `final` (an existing `final` is replaced: a damaged checkpoint is rewritten, not kept)."""
    final = Path(final)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        for f in tmp.iterdir():
            fsync_path(f)
        fsync_path(tmp)
        if final.exists():
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(final.parent)
    return final


def write_json(path: Path, obj) -> None:
    """Write JSON atomically."""
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(obj, indent=2)))


