"""What a reader can tell of a run without taking its lock: who writes it now, and its state. A mixin of
RunDir (rundir.py), split out to keep that file short.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional

from ..errors import RunDirError

CHECKPOINT_PREFIX = "step-"


class RunState:
    """Mixin of RunDir: `writer_pid`, `status`."""

    path: Path

    def writer_pid(self) -> Optional[int]:
        """The PID of the process writing this run now (it holds the lock), else None. Takes no lock:
        a shared flock tried without blocking, released at once."""
        try:
            fd = os.open(self.lock_file, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # nobody holds it (the flock goes with the descriptor, closed below)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)

    def status(self) -> dict:
        """{"state", "step", "checkpoint", "pid"}: state is 'complete' (eval.json: training ended), 'training'
        (a process holds the lock now), 'interrupted' (stopped by a signal at a checkpoint: resume it) or
        'failed' (it ended between checkpoints: a crash, an error, a kill; resume from the last checkpoint).
        step: the newest checkpoint's step, else the last step in metrics.jsonl."""
        ckpts = self.list_checkpoints()
        newest = ckpts[-1] if ckpts else None
        step = int(newest.name[len(CHECKPOINT_PREFIX):]) if newest is not None else None
        if (pid := self.writer_pid()) is not None:  # before eval.json: a resume extends a finished run
            return {"state": "training", "step": self._last_step(step), "checkpoint": newest, "pid": pid}
        if self.eval_file.exists():
            state = "complete"
        else:
            state = "interrupted" if newest is not None and self._stop_reason(newest) == "interrupted" else "failed"
        return {"state": state, "step": step if step is not None else self._last_step(None),
                "checkpoint": newest, "pid": None}

    def _last_step(self, default: Optional[int]) -> Optional[int]:
        try:
            steps = [r["step"] for r in self.metrics() if isinstance(r.get("step"), int)]
        except RunDirError:
            return default
        return max(steps, default=default)

    @staticmethod
    def _stop_reason(checkpoint: Path) -> Optional[str]:
        """The stop reason a checkpoint's state.pt recorded (memory-mapped: the optimizer is not read)."""
        import torch

        try:
            state = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            return None
        return (state.get("trainer") or {}).get("stop_reason") if isinstance(state, dict) else None
