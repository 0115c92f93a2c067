"""A sweep's journal (SWEEP_DIR/journal.log, Optuna's JournalFileBackend: one JSON record a line), read
before Optuna reads it.

A kill while a record is written leaves its line cut short (no newline at the end): that record is
dropped with a note, and the sweep goes on (the trial it belonged to is reclaimed as any dead worker's).
Any other damage (a line that is not JSON or not UTF-8 text, in the middle or at the end) is one
`JournalDamaged` line naming the line; `powertrain sweep --resume DIR --summary` then rebuilds the table
from the trial folders (summary.rows_from_folders), which hold every trial's recipe, metrics and bill.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

from ..errors import RunDirError

LOCK_SUFFIX = ".lock"  # Optuna's JournalFileOpenLock beside the journal
QUIET_S = 0.5  # an unfinished last line that does not grow for this long belongs to a dead writer


class JournalDamaged(RunDirError):
    """The sweep's journal has a damaged record that is not a cut-short last one."""


def repair(path: Path) -> Optional[str]:
    """Drop a cut-short last record of the journal at `path` (returns the note said about it); raise a
    one-line JournalDamaged for any other damage; None when the journal is whole (or absent)."""
    path = Path(path)
    if not path.is_file():
        return None
    data = path.read_bytes()
    note = None
    if data and not data.endswith(b"\n"):
        time.sleep(QUIET_S)  # a live worker may be writing this very line
        if path.stat().st_size != len(data):
            return None  # it grows: a live writer; Optuna skips an unfinished last line when it reads
        keep = data.rfind(b"\n") + 1
        os.truncate(path, keep)
        lock = Path(str(path) + LOCK_SUFFIX)
        if lock.exists() and time.time() - lock.stat().st_mtime > QUIET_S:
            lock.unlink(missing_ok=True)  # left by the killed writer: Optuna would wait 30 s to break it
        note = (f"note: the sweep journal's last record was cut short (a kill while it was written): dropped it "
                f"({len(data) - keep} bytes), as if the kill had come just before it; a trial it leaves unfinished "
                f"is run again")
        data = data[:keep]
    for i, line in enumerate(data.splitlines(), 1):
        try:
            json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            what = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else "not a JSON record"
            raise JournalDamaged(
                f"sweep journal '{path}' line {i} is damaged ({what}); the study cannot be continued from it: "
                f"`powertrain sweep --resume {path.parent} --summary` rebuilds the table from the trial folders, "
                f"and a new sweep (another --out) continues the search") from None
    return note
