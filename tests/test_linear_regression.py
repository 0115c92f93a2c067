"""The documents' gradient-descent training loop (seed 002) as the diabetes-linear recipe: plain SGD on
MSE must reach what the closed-form least-squares solution (sklearn) reaches on the same split, and the
regression metrics must equal sklearn's on the same predictions."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

import powertrain
from browser import check_report


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return powertrain.train("diabetes-linear", out=tmp_path_factory.mktemp("lin") / "run", callbacks=[])


def test_sgd_reaches_the_least_squares_fit(run):
    (x, y), (xt, yt) = (t.tensors for t in (run.trainer.data.train, run.trainer.data.test))
    ls = LinearRegression().fit(x.numpy(), y.numpy())
    best = r2_score(yt.numpy(), ls.predict(xt.numpy()))
    assert run.metrics["test"]["r2"] == pytest.approx(best, abs=0.01)
    w = run.trainer.model[-1].weight.detach().numpy().ravel()
    assert np.corrcoef(w, ls.coef_)[0, 1] > 0.95  # the same solution, not just the same score


def test_regression_metrics_equal_sklearn(run):
    xt, yt = run.trainer.data.test.tensors
    with torch.no_grad():
        pred = run.trainer.model.eval()(xt).reshape(-1).numpy()
    m = run.metrics["test"]
    assert m["mse"] == pytest.approx(mean_squared_error(yt, pred), rel=1e-5)
    assert m["mae"] == pytest.approx(mean_absolute_error(yt, pred), rel=1e-5)
    assert m["r2"] == pytest.approx(r2_score(yt, pred), abs=1e-5)
    assert run.trainer.data.meta.extra["target_std"] > 1  # targets standardised with train statistics


def test_its_report_page_renders_in_a_browser(run):
    check_report(run.dir)  # a regression run: curves, bill, energy; no confusion matrix
