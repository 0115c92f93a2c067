"""The bill for a PyTorch Lightning run: `Trainer(callbacks=[BillCallback(out="runs/pl")])`.

FLOPs are counted by the engine's counter on the inputs of the LightningModule's own forward (call
`self(x)` in `training_step`), or of the module named by `model=` (e.g. `BillCallback(out, model="net")`
when `training_step` calls `self.net(x)`). Validation runs are billed as evaluations during fit; the
last validation and any `trainer.test` go to eval.json. Needs `pip install 'powertrain[lightning]'`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..errors import ModelError
from .core import Tracker

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the message names the extra
    try:
        import pytorch_lightning as pl
    except ImportError:
        raise ImportError("powertrain.integrations.lightning needs PyTorch Lightning: "
                          "pip install 'powertrain[lightning]'") from None


def _numbers(metrics: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in metrics.items():
        try:
            out[k[len(prefix):] if prefix and k.startswith(prefix) else k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


class BillCallback(pl.Callback):
    """Writes a powertrain run directory (metrics.jsonl, eval.json, bill.json) at `out`. `model`: the
    attribute of the LightningModule that `training_step` calls (default: the module itself);
    `options`: name, region, pue, price_per_kwh (see `powertrain.integrations.Tracker`)."""

    def __init__(self, out: str | Path, model: Optional[str] = None, **options: Any):
        super().__init__()
        self.out, self.model_attr, self.options = out, model, options
        self.tracker: Optional[Tracker] = None

    def on_fit_start(self, trainer, pl_module) -> None:
        model = getattr(pl_module, self.model_attr) if self.model_attr else pl_module
        self.tracker = Tracker(model, self.out, framework="lightning", name=self.options.pop("name", None) or
                               f"lightning-{type(pl_module).__name__}",
                               log_every=max(1, trainer.log_every_n_steps), **self.options).start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        t = self.tracker
        if t is None or trainer.global_step <= t.step_count:
            return  # an accumulation micro-batch: the optimizer has not stepped yet
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not t._inputs and t.step_count == 0:
            t.abort()
            raise ModelError(f"BillCallback: {type(pl_module).__name__}.training_step did not call the module "
                             f"the bill watches; call self(x) in training_step, or pass BillCallback(out, model='ATTR') "
                             f"naming the submodule it calls")
        t.step(loss=loss)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.tracker is not None and trainer.state.fn == "fit":
            self.tracker.begin_eval()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.tracker is None or trainer.sanity_checking:
            if self.tracker is not None:
                self.tracker.end_eval()
            return
        self.tracker.end_eval()
        self.tracker.evaluate("val", **_numbers(trainer.callback_metrics, "val_"))

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.tracker is not None:
            self.tracker.finish("interrupted" if trainer.interrupted else "completed")

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.tracker is not None and self.tracker.bill is None:
            self.tracker.abort()

    def on_test_end(self, trainer, pl_module) -> None:
        """`trainer.test` after fit: its metrics join eval.json as the test split."""
        if self.tracker is not None and self.tracker.run is not None:
            self.tracker.evaluate("test", **_numbers(trainer.callback_metrics, "test_"))


__all__ = ["BillCallback"]
