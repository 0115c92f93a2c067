"""The bill for a Hugging Face Trainer run: `Trainer(..., callbacks=[BillCallback(out="runs/hf")])`.

The model's training forwards (the Trainer calls `model(**inputs)`) are counted by the engine's
counter, once per input shape. `evaluate()` during training is billed as evaluation; its metrics
(`eval_*`) become the val split of eval.json. Needs `pip install 'powertrain[transformers]'`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from .core import Tracker

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - the message names the extra
    raise ImportError("powertrain.integrations.transformers needs transformers: "
                      "pip install 'powertrain[transformers]'") from None


def _numbers(metrics: dict, prefix: str) -> dict:
    out = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, (int, float)) and k.startswith(prefix) and not k.endswith(("_runtime", "_per_second")):
            out[k[len(prefix):]] = float(v)
    return out


class BillCallback(TrainerCallback):
    """Writes a powertrain run directory (metrics.jsonl, eval.json, bill.json) at `out`; `options`: name,
    region, pue, price_per_kwh (see `powertrain.integrations.Tracker`)."""

    def __init__(self, out: str | Path, **options: Any):
        self.out, self.options = out, options
        self.tracker: Optional[Tracker] = None

    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        self.tracker = Tracker(model, self.out, framework="transformers",
                               name=self.options.pop("name", None) or f"transformers-{type(model).__name__}",
                               log_every=max(1, int(args.logging_steps)), **self.options).start()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if self.tracker is not None:
            self.tracker.step()

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        t = self.tracker
        if t is not None and t.bill is None and logs and "loss" in logs:
            t.log(step=state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))})

    def on_evaluate(self, args, state, control, metrics=None, **kwargs) -> None:
        if self.tracker is not None:  # after training (trainer.evaluate()): eval.json's test split
            self.tracker.evaluate("val" if self.tracker.bill is None else "test", **_numbers(metrics, "eval_"))

    def on_prediction_step(self, args, state, control, **kwargs) -> None:
        if self.tracker is not None and self.tracker.bill is None:
            self.tracker.begin_eval()  # evaluation time is billed apart from training compute ...

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        if self.tracker is not None:
            self.tracker.end_eval()  # ... until training resumes

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if self.tracker is not None:
            self.tracker.finish()


__all__ = ["BillCallback"]
