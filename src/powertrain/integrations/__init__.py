"""The bill for loops powertrain does not run: your own loop (`track`), PyTorch Lightning, the Hugging
Face Trainer and Keras 3 (torch backend), each writing an ordinary run directory that `powertrain runs`,
`compare`, `report` and `plan --from` read like any run.

    with powertrain.track(model, out="runs/mine") as t:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
            t.step(samples=len(x), loss=loss)
        t.evaluate("test", accuracy=0.97)

    from powertrain.integrations.lightning import BillCallback      # pip install 'powertrain[lightning]'
    from powertrain.integrations.transformers import BillCallback   # pip install 'powertrain[transformers]'
    from powertrain.integrations.keras import BillCallback          # pip install 'powertrain[keras]'

Each adapter imports its framework only when it is imported itself; core.py (`Tracker`) holds what they
share. This package sits on its own rung below train/ and imports nothing of it (docs/architecture.md).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from torch import nn

from .core import Tracker


@contextlib.contextmanager
def track(model: nn.Module, out: str | Path, **options) -> Iterator[Tracker]:
    """A bill for a hand-written loop: `with track(model, out=DIR) as t:` ... `t.step(samples=n, loss=l)` after
    each optimizer step, `t.log(...)`, `t.evaluate("test", accuracy=...)`; bill.json and eval.json are written
    when the block ends (an exception leaves metrics.jsonl and no bill). `options`: name, region, pue,
    price_per_kwh, log_every (see `Tracker`)."""
    tracker = Tracker(model, out, framework="loop", **options).start()
    try:
        yield tracker
    except BaseException:
        tracker.abort()
        raise
    tracker.finish()


__all__ = ["Tracker", "track"]
