"""`powertrain scale`: train a family of model sizes at several compute budgets, fit how the loss falls
with parameters N and data D, and back-test the fit on the largest size.

The form is Hoffmann et al. 2022 (Chinchilla), L(N, D) = E + A / N^alpha + B / D^beta, fitted as they
did: a Huber loss (delta 1e-3) on log L, L-BFGS from a grid of starting points. The uncertainty of each
constant is the spread of bootstrap refits (runs drawn with replacement). N is the bill's parameter
count; D the tokens trained (samples x block for a language model, samples otherwise); a budget C is
training FLOPs as the bill counts them (forward + backward, attention included), so C = k N D with k
measured from the runs (6 plus the attention's share), not assumed.

    SCALE_DIR/runs/n{size}-c{budget}/   one ordinary run per (size, budget); a finished one is kept on rerun
    SCALE_DIR/fit.json                   constants, uncertainty, back-test, calibration (for plan --from-fit)
    SCALE_DIR/fit.png                    measured losses and the fitted curves
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import RecipeError
from ..run.records import read_json

SIZE_KEYS = {"gpt": "model.n_embd", "transformer": "model.d_model", "mlp": "model.hidden", "cnn": "model.conv"}


# -- the fit -----------------------------------------------------------------------------------------
def _predict_log(theta, logn, logd):
    a, b, e, alpha, beta = theta
    return np.logaddexp(np.logaddexp(a - alpha * logn, b - beta * logd), e)


GRID = list(itertools.product((0, 5, 10), (0, 5, 10), (-1, 0, 0.5), (0, 0.5), (0, 0.5)))


def fit_law(n, d, loss, delta: float = 1e-3, starts=None) -> dict:
    """Constants of L = E + A/N^alpha + B/D^beta that fit the points best (Chinchilla's approach 3)."""
    logn, logd, logl = (np.log(np.asarray(x, dtype=float)) for x in (n, d, loss))

    def objective(theta):  # the Huber loss of the log residuals, and its gradient (softmax weights of the log-sum-exp)
        a, b, e, alpha, beta = theta
        u = np.stack([a - alpha * logn, b - beta * logd, np.full_like(logn, e)])
        top = u.max(axis=0)
        w = np.exp(u - top)
        lse = top + np.log(w.sum(axis=0))
        w /= w.sum(axis=0)
        r = lse - logl
        h = np.where(np.abs(r) <= delta, 0.5 * r ** 2, delta * (np.abs(r) - 0.5 * delta)).sum()
        g = np.clip(r, -delta, delta)
        grad = [(g * w[0]).sum(), (g * w[1]).sum(), (g * w[2]).sum(), -(g * w[0] * logn).sum(), -(g * w[1] * logd).sum()]
        return h, np.array(grad)

    from threadpoolctl import threadpool_limits  # (scikit-learn's dependency) one BLAS thread: on a busy
    # machine L-BFGS-B's tiny BLAS calls on several spinning threads ran 70x slower (35 s against 0.5 s)

    with threadpool_limits(1):
        best = _minimize_from(objective, starts or GRID)
    a, b, e, alpha, beta = best.x
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": float(alpha), "beta": float(beta),
            "objective": float(best.fun)}


def _minimize_from(objective, starts):
    from scipy.optimize import minimize

    best = None
    for a, b, e, alpha, beta in starts:
        r = minimize(objective, np.array([a, b, e, alpha, beta], float), method="L-BFGS-B", jac=True,
                     bounds=[(-10, 40), (-10, 40), (-5, 5), (0, 2.5), (0, 2.5)])
        if best is None or r.fun < best.fun:
            best = r
    return best


def law_loss(c: dict, n, d):
    return c["E"] + c["A"] / np.power(n, c["alpha"]) + c["B"] / np.power(d, c["beta"])


def theta(c: dict) -> tuple:
    return (math.log(c["A"]), math.log(c["B"]), math.log(c["E"]), c["alpha"], c["beta"])


def bootstrap(n, d, loss, full: dict, draws: int = 100, seed: int = 0) -> list[dict]:
    """Refits on runs drawn with replacement, each started from the full fit and a few grid points."""
    rng = np.random.default_rng(seed)
    n, d, loss = (np.asarray(x, float) for x in (n, d, loss))
    out = []
    for _ in range(draws):
        i = rng.integers(0, len(n), len(n))
        if len(set(n[i])) < 2 or len(set(d[i])) < 2:
            continue  # a draw with one size or one data amount cannot tell N's term from D's
        out.append(fit_law(n[i], d[i], loss[i], starts=[theta(full), *GRID[::27]]))
    return out


def optimum(c: dict, flops: float, k: float) -> dict:
    """Compute-optimal N and D for a budget C = k N D (Hoffmann et al. 2022, eq. 4)."""
    a, b = c["alpha"], c["beta"]
    if a <= 0 or b <= 0:
        raise RecipeError("the fit has alpha or beta at 0: it cannot say how to split a budget; fit more sizes/budgets")
    g = (a * c["A"] / (b * c["B"])) ** (1 / (a + b))
    nd = flops / k
    n_opt = g * nd ** (b / (a + b))
    return {"params": n_opt, "tokens": nd / n_opt, "flops": flops}


def spread(boot: list[dict], fn) -> Optional[tuple[float, float]]:
    """The 5th and 95th percentiles of fn(constants) over the bootstrap refits."""
    vals = [v for v in (fn(b) for b in boot) if v is not None and np.isfinite(v)]
    return (float(np.percentile(vals, 5)), float(np.percentile(vals, 95))) if len(vals) >= 10 else None


def analyse(points: list[dict], calibration: dict, draws: int = 100) -> dict:
    """The fit on every point, the back-test (fit without the largest N, predict it), the bootstrap."""
    n, d, loss = (np.array([p[k] for p in points], float) for k in ("params", "tokens", "loss"))
    k = float(np.median([p["flops"] / (p["params"] * p["tokens"]) for p in points]))
    largest = n.max()
    keep = n < largest
    if len(set(n[keep])) < 2:
        raise RecipeError("scale: the back-test needs at least 3 sizes (fit on the smaller ones, predict the largest)")
    held = fit_law(n[keep], d[keep], loss[keep])
    pred = law_loss(held, n[~keep], d[~keep])
    backtest = [{"params": float(pn), "tokens": float(pd), "measured": float(m), "predicted": float(p),
                 "error": float((p - m) / m)} for pn, pd, m, p in zip(n[~keep], d[~keep], loss[~keep], pred)]
    full = fit_law(n, d, loss)
    boot = bootstrap(n, d, loss, full, draws)
    unc = {name: spread(boot, lambda b, name=name: b[name]) for name in ("E", "A", "B", "alpha", "beta")}
    return {"form": "L = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022)", "constants": full,
            "interval_90": unc, "bootstrap": boot, "k_flops_per_param_token": k,
            "k_note": "training FLOPs per parameter per token, measured by the bill's counter (6 N D + attention)",
            "backtest": {"held_out_params": float(largest), "fit_without": held, "points": backtest,
                         "max_abs_error": max(abs(b["error"]) for b in backtest)},
            "points": points, "calibration": calibration}


def predict(fit: dict, params: Optional[float] = None, tokens: Optional[float] = None,
            flops: Optional[float] = None) -> dict:
    """Loss (with its bootstrap 90% interval) for N and D, or for the compute-optimal split of a budget."""
    c, k = fit["constants"], fit["k_flops_per_param_token"]
    if params is None:
        if flops is None:
            raise RecipeError("plan --from-fit: give --flops C, or --params N with --tokens D")
        params, tokens = (optimum(c, flops, k)[x] for x in ("params", "tokens"))
    elif tokens is None:
        if flops is None:
            raise RecipeError("plan --from-fit: --params needs --tokens (or --flops)")
        tokens = flops / (k * params)
    loss = float(law_loss(c, params, tokens))
    return {"params": float(params), "tokens": float(tokens), "flops": k * params * tokens, "loss": loss,
            "loss_interval_90": spread(fit.get("bootstrap", []), lambda b: float(law_loss(b, params, tokens))),
            "k": k}


def load_fit(path: str | Path) -> dict:
    p = Path(path)
    f = p if p.suffix == ".json" else p / "fit.json"
    if not f.is_file():
        raise RecipeError(f"--from-fit {path}: no file {f}; make one with powertrain scale RECIPE --sizes ... --budgets ...")
    fit = read_json(f)
    if (not {"E", "A", "B", "alpha", "beta"} <= set(fit.get("constants") or {}) or "k_flops_per_param_token" not in fit
            or "calibration" not in fit or "backtest" not in fit):
        raise RecipeError(f"--from-fit {path}: not a fit.json written by powertrain scale")
    return fit
