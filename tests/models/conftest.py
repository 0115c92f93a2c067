"""Helpers for the model tests: tiny synthetic data and a few Trainer steps."""
import pytest
import torch

from powertrain.data import DataBundle, DataMeta, TensorSplit
from powertrain.train.engine import Trainer
from powertrain.recipe import TrainConfig


@pytest.fixture
def fit():
    """fit(model, bundle, steps, lr) -> (train loss before, train loss after) `steps` Trainer steps."""

    def run(model, bundle: DataBundle, steps: int = 30, lr: float = 1e-2, batch_size: int = 32):
        torch.manual_seed(0)
        cfg = TrainConfig(max_steps=steps, lr=lr, batch_size=batch_size, log_every=10_000, device="cpu")
        trainer = Trainer(model, bundle, cfg, callbacks=[])
        before = trainer.evaluate("train")["loss"]
        trainer.fit()
        return before, trainer.evaluate("train")["loss"]

    return run


def bundle(x: torch.Tensor, y: torch.Tensor, task: str, num_classes=None, **extra) -> DataBundle:
    """A train-only DataBundle with meta built by hand (shape from x, extra as given)."""
    return DataBundle(TensorSplit(x, y), None, None, DataMeta(tuple(x.shape[1:]), task, num_classes, extra=extra))


@pytest.fixture
def make_bundle():
    return bundle
