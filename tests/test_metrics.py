"""Task metrics against sklearn."""
import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from powertrain.train.metrics import TaskMetrics


def test_multiclass_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 5, generator=g)
    y = torch.randint(0, 5, (500,), generator=g)
    y[:200] = logits[:200].argmax(1)  # some signal
    m = TaskMetrics("multiclass", 5)
    for chunk in range(0, 500, 128):  # accumulated over batches, as in evaluation
        m.update(logits[chunk:chunk + 128], y[chunk:chunk + 128])
    got = m.compute()
    pred, true = logits.argmax(1).numpy(), y.numpy()
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(true, pred))
    assert got["precision_macro"] == pytest.approx(skm.precision_score(true, pred, average="macro"))
    assert got["recall_macro"] == pytest.approx(skm.recall_score(true, pred, average="macro"))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(true, pred, average="macro"))
    assert np.array_equal(np.array(got["confusion_matrix"]), skm.confusion_matrix(true, pred))


def test_binary_from_logits_matches_sklearn():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 1, generator=g)
    y = (torch.rand(300, generator=g) < 0.4).float()
    m = TaskMetrics("binary")
    m.update(logits, y)
    got = m.compute()
    pred, true = (logits.reshape(-1) > 0).long().numpy(), y.long().numpy()
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(true, pred))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(true, pred, average="macro"))
    assert np.array_equal(np.array(got["confusion_matrix"]), skm.confusion_matrix(true, pred))


def test_regression_matches_sklearn():
    pred, true = torch.randn(100, 1), torch.randn(100)
    m = TaskMetrics("regression")
    m.update(pred, true)
    got = m.compute()
    assert got["mse"] == pytest.approx(skm.mean_squared_error(true, pred.reshape(-1)), rel=1e-5)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(true, pred.reshape(-1)), rel=1e-5)
