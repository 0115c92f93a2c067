"""When a write into a run directory fails: one line that says what filled, where, what is kept and how to
go on, in place of the library's own error (torch.save's "unexpected pos 142400 vs 142292", safetensors'
"No space left on device", a bare OSError without a file name).

>>> import errno, tempfile, pathlib
>>> run = pathlib.Path(tempfile.mkdtemp()); (run / "checkpoints" / "step-00000006").mkdir(parents=True)
>>> (run / "recipe.yaml").touch()
>>> e = write_failure(OSError(errno.ENOSPC, "No space left on device"), run / "checkpoints" / "step-00000012")
>>> str(e).split(";")[0]  # doctest: +ELLIPSIS
"disk full while writing checkpoint step-00000012 in '...checkpoints' (No space left on device)"
"""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

from ..errors import WriteError

LOW_BYTES = 1 << 20  # less free space than this after a failed write: the disk is full
LIMIT = "file size limit (ulimit -f) reached"
_ERRNO = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota used up", errno.EFBIG: LIMIT}
_TEXT = {"No space left": "disk full", "Disk quota": "disk quota used up", "File too large": LIMIT}
SHORT = ("unexpected pos", "file write failed")  # torch.save's words when the OS wrote fewer bytes than asked


def _free(path: Path) -> int | None:
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def cause(e: BaseException, path: Path) -> tuple[str, str]:
    """(what ran out, or '' if nothing did; the error in a few words) of a failed write to `path`."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if isinstance(e, OSError) and e.errno in _ERRNO:
        return _ERRNO[e.errno], e.strerror or text
    for key, what in _TEXT.items():
        if key in text:
            return what, key if key != "No space left" else "No space left on device"
    free = _free(path)
    if free is not None and free < LOW_BYTES:
        return "disk full", f"{free:,} bytes free"
    if any(s in text for s in SHORT):
        return "write cut short", f"{type(e).__name__}: {text[:120]}; a full disk, a quota or a size limit"
    return "", f"{type(e).__name__}: {text[:160]}"


def _run_of(path: Path) -> Path | None:
    for p in (path, *path.parents):
        if (p / "recipe.yaml").is_file():
            return p
    return None


def kept(run: Path, skip: Path | None = None) -> list[str]:
    """Names of the run's checkpoints on disk (oldest first, best.safetensors last), `skip` left out."""
    folder = run / "checkpoints"
    if not folder.is_dir():
        return []
    steps = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-")
                   and (skip is None or p != skip))
    return steps + [p.name for p in sorted(folder.glob("*.safetensors")) if skip is None or p != skip]


def write_failure(e: BaseException, target: Path, what: str | None = None) -> WriteError:
    """The one-line WriteError for a failed write of `target` (a checkpoint folder, weights or a run's file)."""
    target = Path(target)
    ran_out, detail = cause(e, target)
    what = what or (f"checkpoint {target.name}" if target.name.startswith("step-") else target.name)
    head = (f"{ran_out} while writing {what} in '{target.parent}' ({detail})" if ran_out
            else f"{what} in '{target.parent}' could not be written ({detail})")
    run = _run_of(target.parent)
    fix = "free some space" if ran_out in ("disk full", "write cut short", "") else (
        "free some space or raise the quota" if "quota" in ran_out else "raise the limit (ulimit -f)")
    if ran_out == "":
        fix = "fix the cause"
    if run is None:
        return WriteError(f"{head}; {fix} and write it again")
    have = kept(run, target)
    steps = [k for k in have if k.startswith("step-")]
    keep = (f"kept whole: {', '.join(have)}" if have else "no checkpoint was kept yet")
    if (run / "derived.json").is_file():
        go = f"{fix}, then derive the run again (a derived run is not resumed)"
    elif steps:
        go = f"{fix}, then `powertrain resume {run}` continues from {steps[-1]}"
    elif target.name == "recipe.yaml" or not (run / "recipe.yaml").is_file():
        go = f"{fix}, then train again"
    else:
        go = f"{fix}, then `powertrain resume {run}` (it starts from step 0: no checkpoint yet)"
    return WriteError(f"{head}; {keep}; {go}")
