"""Privacy measured, not only claimed: a membership-inference audit of a run, `powertrain audit RUN`.

The attack is the loss threshold (Yeom et al. 2018): a sample is called a member of the training set
when the model's loss on it is below a threshold. It is run on `n` samples the model trained on (the
train split) against `n` held-out samples of the same distribution (test, else val), and reported as

    auc                 area under the attack's ROC curve (0.5: no better than a coin)
    tpr_at_1pct_fpr     members found when at most 1% of non-members are called members
    advantage           max over thresholds of TPR - FPR
    each with a 95% bootstrap interval (members and non-members resampled with replacement)

For a private run (train.privacy) the bill's (epsilon, delta) bounds every attack: at any FPR,
TPR <= min(e^eps FPR + delta, 1 - e^-eps (1 - delta - FPR)) (Kairouz et al. 2015), so the advantage
is at most (e^eps - 1 + 2 delta) / (e^eps + 1); audit.json gives these bounds beside the measured
figures, and audit-roc.png draws the attack's ROC curve under the bound's. The bound is about one
sample's membership; the attack's rates average over many samples, so they estimate, not test, it.

>>> from powertrain.trust.audit import audit
>>> report = audit("runs/digits-mlp")  # doctest: +SKIP
>>> report["auc"], report["auc_ci95"]  # doctest: +SKIP
(0.53, [0.50, 0.56])
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import RecipeError

AT_FPR = 0.01
BOOTSTRAP = 1000


# ---------------------------------------------------------------- per-sample losses
@torch.no_grad()
def sample_losses(trainer, split, idx: torch.Tensor) -> np.ndarray:
    """The model's loss on each sample `idx` of `split` (eval mode): the loss it trained on, per sample."""
    model, task = trainer.model.eval(), trainer.task
    own = getattr(model, "compute_loss", None)
    out = []
    bs = trainer.cfg.eval_batch_size
    for i in range(0, len(idx), bs):
        part = idx[i:i + bs]
        batch = next(split.batches(part, len(part)))
        if own is not None:  # the model's own loss is a batch mean: one sample at a time
            for k in range(len(part)):
                one = tuple(t[k:k + 1] for t in batch)
                out.append(float(own(one, model(one[0]))))
            continue
        x, y = batch[0], batch[-1]
        logits = model(x)
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        if task == "multiclass":
            loss = F.cross_entropy(logits, y, reduction="none")
        elif task == "binary":
            loss = F.binary_cross_entropy_with_logits(logits.reshape(-1), y.reshape(-1).float(), reduction="none")
        elif task == "language_model":
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(len(x), -1).mean(1)
        elif task == "reconstruction":
            loss = (logits - x).pow(2).flatten(1).mean(1)
        elif task == "regression":
            loss = (logits.reshape(y.shape) - y).pow(2).reshape(len(x), -1).mean(1)
        else:
            raise RecipeError(f"audit: no per-sample loss for task '{task}'")
        out.extend(loss.float().cpu().tolist())
    return np.asarray(out, dtype=np.float64)


# ---------------------------------------------------------------- the attack's figures
def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(score of a member > score of a non-member) + half the ties (Mann-Whitney)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([members, nonmembers]))
    m, n = len(members), len(nonmembers)
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, at: float = AT_FPR) -> float:
    """The share of members whose score is above the threshold that at most `at` of non-members pass."""
    k = int(math.floor(at * len(nonmembers)))
    threshold = np.sort(nonmembers)[::-1][k] if k < len(nonmembers) else -np.inf
    return float((members > threshold).mean())


def roc(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    fpr, tpr, _ = roc_curve(labels, np.r_[members, nonmembers])
    return fpr, tpr


def figures(members: np.ndarray, nonmembers: np.ndarray) -> dict:
    fpr, tpr = roc(members, nonmembers)
    return {"auc": auc(members, nonmembers), "tpr_at_1pct_fpr": tpr_at_fpr(members, nonmembers),
            "advantage": float(np.max(tpr - fpr))}


def bootstrap(members: np.ndarray, nonmembers: np.ndarray, reps: int = BOOTSTRAP, seed: int = 0) -> dict:
    """95% percentile intervals of each figure, members and non-members resampled with replacement."""
    rng = np.random.default_rng(seed)
    rows = [figures(rng.choice(members, len(members)), rng.choice(nonmembers, len(nonmembers))) for _ in range(reps)]
    return {k: [float(np.percentile([r[k] for r in rows], 2.5)), float(np.percentile([r[k] for r in rows], 97.5))]
            for k in rows[0]}


def dp_bounds(epsilon: float, delta: float) -> dict:
    """What (epsilon, delta)-DP allows any membership test: advantage, TPR at 1% FPR, ROC AUC."""
    from .figures import dp_roc_bound

    e = math.exp(min(epsilon, 700.0))
    grid = np.linspace(0, 1, 20001)
    curve = dp_roc_bound(grid, epsilon, delta)
    area = float(np.trapezoid(curve, grid)) if hasattr(np, "trapezoid") else float(np.trapz(curve, grid))
    return {"epsilon": epsilon, "delta": delta, "advantage": min(1.0, (e - 1 + 2 * delta) / (e + 1)),
            "tpr_at_1pct_fpr": float(dp_roc_bound(np.array([AT_FPR]), epsilon, delta)[0]), "auc": area,
            "source": "TPR <= min(e^eps FPR + delta, 1 - e^-eps (1 - delta - FPR)) (Kairouz et al. 2015)"}


# ---------------------------------------------------------------- the command
def audit_trainer(trainer, n: Optional[int] = 5000, nonmember_split: Optional[str] = None, seed: int = 0,
                  reps: int = BOOTSTRAP, privacy: Optional[dict] = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """The attack on a Trainer's model: (figures, member scores, non-member scores). Scores are minus
    the loss (higher: more likely a member)."""
    from ..train.privacy import unwrap

    members_split = unwrap(trainer.data.train)
    name = nonmember_split or ("test" if trainer.data.test is not None else "val")
    if name == "train":
        raise RecipeError("--nonmembers: the train split holds the members; pick val or test")
    held = trainer.data.split(name)
    k = min(len(members_split), len(held), n or 10**12)
    if k < 10:
        raise RecipeError(f"audit: {k} samples per side; the audit needs at least 10 members and 10 non-members")
    g = torch.Generator().manual_seed(seed)
    mi = torch.randperm(len(members_split), generator=g)[:k].sort().values
    ni = torch.randperm(len(held), generator=g)[:k].sort().values
    was = trainer.model.training
    try:
        members = -sample_losses(trainer, members_split, mi)
        nonmembers = -sample_losses(trainer, held, ni)
    finally:
        trainer.model.train(was)
    result = {"attack": "loss threshold (Yeom et al. 2018): a sample is called a member when the model's loss on "
                        "it is below a threshold",
              "members": {"split": "train", "n": k}, "nonmembers": {"split": name, "n": k},
              **figures(members, nonmembers)}
    ci = bootstrap(members, nonmembers, reps, seed)
    result.update({f"{key}_ci95": v for key, v in ci.items()})
    result["loss"] = {"members_mean": float(-members.mean()), "nonmembers_mean": float(-nonmembers.mean())}
    result["bootstrap"] = {"resamples": reps, "seed": seed}
    if privacy:
        b = dp_bounds(privacy["epsilon"], privacy["delta"])
        result["bound"] = b
        result["within_bound"] = bool(result["auc_ci95"][0] <= b["auc"] and result["advantage_ci95"][0] <= b["advantage"]
                                      and result["tpr_at_1pct_fpr_ci95"][0] <= b["tpr_at_1pct_fpr"])
    else:
        result["bound"] = None
        result["within_bound"] = None
    return result, members, nonmembers


def audit(run_dir: str | Path, n: Optional[int] = 5000, nonmembers: Optional[str] = None, seed: int = 0,
          checkpoint: Optional[str] = None, reps: int = BOOTSTRAP) -> dict:
    """Run the membership-inference audit on a run's final weights; write audit.json and audit-roc.png
    into the run directory; returns audit.json's content."""
    from ..train.load import load_trainer
    from ..measure.bill import BillRecord, carbon_model, make_bill
    from ..measure import Meter
    from ..models import count_params
    from ..run.rundir import RunDir
    from .figures import roc_picture

    run = RunDir.open(run_dir)
    if run.kind == "quantized" and checkpoint is None:
        from ..train.load import load_model

        trainer = load_model(run.path)[2]
    else:
        trainer = load_trainer(run, checkpoint)
    bill = run.read("bill", required=False) or {}
    privacy = bill.get("privacy")
    meter = Meter(carbon=carbon_model(run.recipe().run))
    meter.begin("fit")  # the bill's name for the metered work: here, the attack's forward passes
    try:
        result, members, non = audit_trainer(trainer, n, nonmembers, seed, reps, privacy)
    except BaseException:
        meter.end("fit")
        raise
    samples = 2 * result["members"]["n"]
    window = meter.end("fit", flops=samples * (trainer.forward_flops_per_sample or 0))
    fpr, tpr = roc(members, non)
    title = (f"{run.path.name}: membership inference, {result['members']['n']} members vs "
             f"{result['nonmembers']['n']} non-members ({result['nonmembers']['split']})")
    picture = roc_picture(run.audit_picture, fpr, tpr, result["auc"], result["tpr_at_1pct_fpr"],
                          result["bound"], title)
    result.update({
        "run": str(run.path), "checkpoint": checkpoint,
        "privacy": {k: privacy.get(k) for k in ("epsilon", "delta", "accountant", "noise_multiplier",
                                                 "sample_rate", "max_grad_norm")} if privacy else None,
        "picture": picture.name,
        "cost": {"time_s": window.time_s, "flops": window.flops, "energy_j": window.energy_j,
                 "energy_method": window.energy_method, "co2e_g": window.co2e_g,
                 "flops_note": "forward passes only: samples x the model's forward FLOPs per sample"},
        "bill": make_bill(meter, BillRecord(params=count_params(trainer.model), samples_evaluated=samples,
                                            device=trainer.device, precision=trainer.precision)),
    })
    notes = [] if privacy else ["the run is not private (no train.privacy): no bound to compare with"]
    if trainer.task == "language_model":
        notes.append("a language model's held-out windows come from another part of the corpus (its tail), not from "
                     "the same distribution as the train windows: the AUC mixes membership with that shift")
    result["notes"] = notes
    run.write("audit", result)
    return result


__all__ = ["audit", "audit_trainer", "auc", "tpr_at_fpr", "dp_bounds", "bootstrap", "sample_losses"]


def format_audit(r: dict) -> str:
    """audit.json as a few lines."""
    from ..measure.bill import _si

    def ci(key):
        lo, hi = r[f"{key}_ci95"]
        return f"{r[key]:.3f} (95% CI {lo:.3f}-{hi:.3f})"
    lines = [f"membership inference, loss threshold: {r['members']['n']} train samples vs {r['nonmembers']['n']} "
             f"{r['nonmembers']['split']} samples",
             f"  AUC {ci('auc')}   TPR at 1% FPR {ci('tpr_at_1pct_fpr')}   advantage {ci('advantage')}"]
    b = r.get("bound")
    if b:
        verdict = "within the bound" if r["within_bound"] else "ABOVE the bound: the privacy claim is contradicted"
        lines.append(f"  (eps {b['epsilon']:.3g}, delta {b['delta']:g})-DP allows at most: AUC {b['auc']:.3f}, TPR at 1% FPR "
                     f"{b['tpr_at_1pct_fpr']:.3f}, advantage {b['advantage']:.3f}: measured {verdict}")
    else:
        lines.append("  the run is not private (no train.privacy): no bound to compare with")
    c = r["cost"]
    lines.append(f"cost: {c['time_s']:.2f} s, {_si(c['flops'], 'FLOP')}, {_si(c['energy_j'], 'J')} ({c['energy_method']})")
    return "\n".join(lines)
