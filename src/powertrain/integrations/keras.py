"""The bill for a Keras 3 run on the torch backend: `model.fit(..., callbacks=[BillCallback(out="runs/k")])`.

Keras calls a model through its own `Layer.__call__`, not `nn.Module.__call__`, so no forward hook
fires: the callback wraps the model's `call` for the run and hands the training inputs to the
`Tracker`, whose counter (the engine's) runs the model's forward and backward once per input shape.
`validation_data` metrics (`val_*`) go to eval.json's val split; `model.evaluate` after fit to its
test split. Needs `pip install 'powertrain[keras]'` and KERAS_BACKEND=torch.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Optional

from ..errors import ModelError
from .core import Tracker

os.environ.setdefault("KERAS_BACKEND", "torch")
try:
    import keras
except ImportError:  # pragma: no cover - the message names the extra
    raise ImportError("powertrain.integrations.keras needs Keras 3: pip install 'powertrain[keras]'") from None


def _numbers(logs: Optional[dict], prefix: str = "") -> dict:
    return {k[len(prefix):]: float(v) for k, v in (logs or {}).items()
            if k.startswith(prefix) and isinstance(v, (int, float))}


class BillCallback(keras.callbacks.Callback):
    """Writes a powertrain run directory (metrics.jsonl, eval.json, bill.json) at `out`; `options`: name,
    region, pue, price_per_kwh (see `powertrain.integrations.Tracker`)."""

    def __init__(self, out: str | Path, **options: Any):
        super().__init__()
        if keras.backend.backend() != "torch":
            raise ModelError(f"BillCallback: Keras runs on the {keras.backend.backend()} backend; the bill needs the "
                             f"torch backend: set KERAS_BACKEND=torch before importing keras")
        self.out, self.options = out, options
        self.tracker: Optional[Tracker] = None
        self._call = None

    def on_train_begin(self, logs=None) -> None:
        model = self.model
        self.tracker = t = Tracker(model, self.out, framework="keras", hook=False,
                                   name=self.options.pop("name", None) or f"keras-{type(model).__name__}",
                                   **self.options).start()
        self._call = call = model.call

        @functools.wraps(call)
        def watched(*args, **kwargs):
            if kwargs.get("training"):
                t.saw(args, {k: v for k, v in kwargs.items() if k != "training"})
            return call(*args, **kwargs)

        model.call = watched

    def on_train_batch_end(self, batch, logs=None) -> None:
        t = self.tracker
        t.step()
        if t.step_count % t.log_every == 0 and logs and "loss" in logs:
            t.log(**_numbers(logs))

    def on_test_begin(self, logs=None) -> None:
        if self.tracker is not None and self.tracker.bill is None:
            self.tracker.begin_eval()

    def on_test_end(self, logs=None) -> None:
        t = self.tracker
        if t is None:
            return
        if t.bill is None:
            t.end_eval()
        else:  # model.evaluate after fit
            t.evaluate("test", **_numbers(logs))

    def on_epoch_end(self, epoch, logs=None) -> None:
        if self.tracker is not None and any(k.startswith("val_") for k in logs or {}):
            self.tracker.evaluate("val", **_numbers(logs, "val_"))

    def on_train_end(self, logs=None) -> None:
        if self._call is not None:
            del self.model.call  # the class's own call again
            self._call = None
        if self.tracker is not None:
            self.tracker.finish()


__all__ = ["BillCallback"]
