"""SIGINT (Ctrl-C) and SIGTERM (what schedulers send) during training: the first one is noted and the
current step finishes; the Trainer then checkpoints at that step boundary and stops. A second one
abandons the step at once (KeyboardInterrupt): the last checkpoint stands.

>>> with Deferred() as sig:
...     pass
>>> sig.received is None
True
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal after checkpointing at a step boundary. `exit_code`: 130 for
    SIGINT, 143 for SIGTERM (128 + the signal's number, as a shell reports it)."""

    def __init__(self, signum: int, step: int, checkpoint):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum

    def tell(self, run_dir) -> None:
        """What was kept and the command that continues, on stderr."""
        kept = f"checkpoint saved in {self.checkpoint}" if self.checkpoint else "no checkpoint was written"
        print(f"\ninterrupted at step {self.step}; {kept}\nresume with: powertrain resume {run_dir}", file=sys.stderr,
              flush=True)


class Deferred:
    """Context manager: while inside, SIGINT and SIGTERM set `received` instead of raising (outside the
    main thread, where handlers cannot be installed, signals keep their usual effect)."""

    def __init__(self):
        self.received: Optional[int] = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # the second signal: abandon the step
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> "Deferred":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}
