"""A run's JSON files and its metrics log (metrics.jsonl), read and appended; RunDir names the paths.

>>> import tempfile, pathlib; log = MetricsLog(pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl")
>>> log.write({"step": 1, "loss": 0.5}); read_jsonl(log.path)
[{'step': 1, 'loss': 0.5}]
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from ..errors import RunDirError
from .atomic import dumps


def read_json(path: Path, required: bool = True):
    """A JSON file, or None when it is missing and not `required`; a damaged file is a one-line error."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        if required:
            raise RunDirError(f"'{path}' is missing; the run did not finish: `powertrain resume {Path(path).parent}`") from None
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunDirError(f"'{path}' is not valid JSON; the file was damaged") from None


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:  # only the last line may be cut short by a crash
                raise RunDirError(f"'{path}' line {i + 1} is not JSON; the file was edited or damaged") from None
    return records


class MetricsLog:
    """Appends JSON lines to `path` (None: to nowhere). Between `open()` and `close()` the file stays
    open: a line costs a buffered write, not an open (~100 us at an epoch edge, where the caches are
    cold). Lines reach the OS at least every second and on `flush()`; the Trainer flushes before every
    checkpoint, so a killed run loses only lines after its last checkpoint, which a resume replays."""

    def __init__(self, path: Path | None):
        self.path, self._file, self._flushed = path, None, 0.0

    def open(self) -> None:
        if self.path is not None and self._file is None:
            self._file = open(self.path, "a")

    def write(self, record: dict) -> None:
        try:
            if self._file is None:
                if self.path is not None:
                    with open(self.path, "a") as f:
                        f.write(dumps(record) + "\n")
                return
            self._file.write(dumps(record) + "\n")
        except OSError as e:
            raise self._failed(e) from None
        if time.monotonic() - self._flushed >= 1.0:  # `tail -f` sees lines within a second
            self.flush()

    def _failed(self, e: OSError):
        """A write that failed (a full disk): the buffered lines are dropped (a resume replays them from the
        last checkpoint), the file closed, and the one-line WriteError returned."""
        from .storage import write_failure

        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            except OSError:
                pass
        return write_failure(e, self.path)

    def offset(self) -> Optional[int]:
        """Bytes written so far (all flushed): where a resume from a checkpoint taken now cuts the file."""
        if self._file is not None:
            self.flush()
            return self._file.tell()
        return self.path.stat().st_size if self.path is not None and self.path.exists() else None

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()  # to the OS: a killed process loses nothing flushed
            except OSError as e:
                raise self._failed(e) from None
            self._flushed = time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
