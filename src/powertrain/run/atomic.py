"""One atomic writer for every file of a run directory: temp file, fsync of the file, rename, fsync
of the folder; and the same for a whole folder (a checkpoint). A kill at any moment leaves either the
old or the new version, never a half-written one."""
from __future__ import annotations

import contextlib
import json
import math
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


def _nonfinite(v: float) -> str:
    return "NaN" if math.isnan(v) else ("+inf" if v > 0 else "-inf")


def strict(obj):
    """`obj` with every NaN or infinity made None (JSON holds neither); in a mapping, the key `<key>_note`
    beside it says what the value was (for a list: at which positions). Tuples become lists.

    >>> strict({"loss": float("nan"), "curve": [1.0, float("inf")], "ok": 2.0})
    {'loss': None, 'loss_note': 'NaN (not a finite number: JSON holds none)', 'curve': [1.0, None], 'curve_note': '+inf at [1] (not finite numbers: JSON holds none)', 'ok': 2.0}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out[k] = strict(v)
            if isinstance(v, float) and not math.isfinite(v):
                out[f"{k}_note"] = f"{_nonfinite(v)} (not a finite number: JSON holds none)"
            elif isinstance(v, (list, tuple)):
                bad = [(i, x) for i, x in enumerate(v) if isinstance(x, float) and not math.isfinite(x)]
                if bad:
                    where = ", ".join(f"{_nonfinite(x)} at [{i}]" for i, x in bad[:5]) + (", ..." if len(bad) > 5 else "")
                    out[f"{k}_note"] = f"{where} (not finite numbers: JSON holds none)"
        return out
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def dumps(obj, **kwargs) -> str:
    """Strict JSON text of `obj` (`strict`: no NaN or Infinity, which json.dumps writes and JSON forbids)."""
    return json.dumps(strict(obj), allow_nan=False, **kwargs)


def write_json(path: Path, obj) -> None:
    """Write strict JSON (`dumps`) atomically."""
    text = dumps(obj, indent=2)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))


