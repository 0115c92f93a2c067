"""Explanations of a trained run, through Captum, checked and billed: `powertrain explain RUN`.

For `n` samples of a split, each method (saliency, integrated gradients, occlusion) attributes the
model's output for a target (the predicted or the true class; a language model's next character; an
autoencoder's reconstruction error; a regression's output) to the input features: pixels, time steps,
table columns, characters. Three checks say whether the maps explain the model:

    deletion       accuracy (and the target's probability) as the top-k attributed features are set to
                   the baseline, against k random features; faithful when the curve falls faster: the
                   area between the curves (random minus attributed, over the removed fraction) is > 0
    randomisation  Spearman rank correlation of |attribution| of the trained model and of the same
                   architecture with re-initialised weights (Adebayo et al. 2018): a method whose maps stay
                   alike (rho >= 0.5) does not explain what the model learnt
    infidelity, sensitivity_max   Captum's metrics (Yeh et al. 2019), for real-valued inputs

The work is metered (one Meter window, FLOPs counted by torch's FlopCounterMode) and billed with
`bill.make_bill`: explain.json holds the methods' results, the checks and the bill; explain.png the
picture (figures.py).

Over 400 lines on purpose: the task per data kind, the three methods and the three checks share one
`Task` and are read together; split apart, each part would need the others to make sense.

>>> from powertrain.trust.explain import explain
>>> report = explain("runs/digits-mlp", n=16)  # doctest: +SKIP
>>> report["methods"]["integrated_gradients"]["deletion"]["faithful"]  # doctest: +SKIP
True
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..errors import RecipeError, need_extra

METHODS = ("saliency", "integrated_gradients", "occlusion")
FRACTIONS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)  # of the input features removed in the deletion test
RANDOM_ORDERS = 3  # random removal orders per sample, averaged
IG_STEPS = 32
RHO_THRESHOLD = 0.5  # randomisation check: mean Spearman rho below this passes
INFID_PERTURB, SENS_PERTURB = 8, 4  # perturbations per sample of infidelity and of sensitivity_max
PROMPT_CHARS = 64  # a language model is explained on the first 64 characters of a window


def captum():
    return need_extra("captum", "trust", "powertrain explain")


def count_flops(fn: Callable, *args, **kwargs) -> tuple:
    """(fn's result, FLOPs) counted by torch's FlopCounterMode with powertrain's formulas, without its
    module tracker: the tracker's backward hooks break torch.autograd.grad on inputs (Captum's gradients).
    FLOPs are None where counting fails (the work is still timed and its energy measured)."""
    from torch.utils import flop_counter

    from ..measure.flops import FLOP_FORMULAS

    class GlobalCounter(flop_counter.FlopCounterMode):
        def __enter__(self):
            self.flop_counts.clear()
            self.mode = flop_counter._FlopCounterMode(self)
            self.mode.__enter__()
            return self

        def __exit__(self, *exc):
            mode, self.mode = self.mode, None
            return mode.__exit__(*exc)

    try:
        counter = GlobalCounter(display=False, custom_mapping=dict(FLOP_FORMULAS))
    except Exception:  # another torch: time and energy only
        return fn(*args, **kwargs), None
    with counter:
        result = fn(*args, **kwargs)
    return result, int(counter.get_total_flops())


# ---------------------------------------------------------------- what is explained, per data kind
@dataclass
class Task:
    """The function Captum attributes, its inputs, targets and the baseline that 'removes' a feature."""

    kind: str  # image, signal, table, text, reconstruction
    task: str  # the dataset's task: multiclass, binary, regression, reconstruction, language_model
    model: nn.Module
    fn: Callable  # inputs (+ extra) -> (B, C) scores, or (B,) for a scalar per sample
    x: torch.Tensor  # (n, ...) inputs: float features, or token ids
    target: Optional[torch.Tensor]  # (n,) class indices, or None for a scalar output
    labels: Optional[torch.Tensor]  # (n,) true classes (deletion accuracy), or None
    baseline: float | int  # value (or token id) a removed feature takes
    extra: tuple = ()  # additional_forward_args (the reconstruction's original inputs)
    tokens: bool = False
    embedding: Optional[str] = None  # tokens: name of the embedding layer the ids go through
    classifier: bool = True  # scores are logits: softmax probability and accuracy apply


def data_kind(meta) -> str:
    if meta.task == "reconstruction":
        return "reconstruction"
    if meta.input_dtype == torch.long:
        return "text"
    return {3: "image", 2: "signal"}.get(len(meta.input_shape), "table")


def _logits(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def task_function(model: nn.Module, task: str) -> Callable:
    """The scores Captum attributes, for a dataset's task: (B, C) logits of a classifier (a binary model's
    one logit z as [-z/2, z/2], whose softmax is sigmoid(z)), a language model's next-token logits,
    a regression's outputs, or (B,) minus the reconstruction error of the original inputs."""
    if task == "language_model":
        return lambda ids: model(ids)[:, -1, :]
    if task == "binary":
        def fn(inp):
            z = _logits(model(inp)).reshape(len(inp), -1)[:, :1]
            return torch.cat([-z / 2, z / 2], dim=1)
        return fn
    if task == "regression":
        return lambda inp: _logits(model(inp)).reshape(len(inp), -1)
    if task == "reconstruction":
        return lambda inp, orig: -(_logits(model(inp)) - orig).pow(2).flatten(1).mean(1)
    return lambda inp: _logits(model(inp))


def build_task(model: nn.Module, meta, split, n: int, target: str, seed: int) -> Task:
    """n samples of `split` (a seeded choice) and the function to explain for this dataset's task."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(split), generator=g)[:n].sort().values
    batch = next(split.batches(idx, len(idx)))
    x, y = batch[0], batch[-1]
    if meta.task == "language_model":
        L = min(PROMPT_CHARS, x.shape[1])
        x, y = x[:, :L], y[:, L - 1]  # the prompt and the character that follows it
    fn = task_function(model, meta.task)
    tokens = x.dtype == torch.long
    baseline = 0
    if tokens:
        itos = getattr(meta.vocab, "itos", None) or []
        if meta.pad_id is not None:
            baseline = int(meta.pad_id)
        elif " " in itos:
            baseline = int(itos.index(" "))
    classifier = meta.task in ("multiclass", "binary", "language_model")
    extra = (x,) if meta.task == "reconstruction" else ()
    with torch.no_grad():
        scores = fn(x, *extra)
    labels, t = None, None
    if classifier:
        labels = y.reshape(len(x)).long()
        t = scores.argmax(1) if target == "predicted" else labels
    elif meta.task == "regression":
        t = torch.zeros(len(x), dtype=torch.long, device=x.device)  # the first output
    out = Task(data_kind(meta), meta.task, model, fn, x, t, labels, baseline, extra, tokens, classifier=classifier)
    if tokens:
        out.embedding = _embedding_of(model, fn, x)
    return out


def one_sample(task: Task) -> Task:
    """The task cut to its first sample (FLOPs are counted on it and scaled by the samples)."""
    cut = lambda t: None if t is None else t[:1]  # noqa: E731
    return replace(task, x=task.x[:1], target=cut(task.target), labels=cut(task.labels),
                   extra=tuple(e[:1] for e in task.extra))


@torch.no_grad()
def _forward(task: Task):
    return task.fn(task.x, *task.extra)


def twin_task(task: Task, twin: nn.Module) -> Task:
    """The same inputs and targets explained on another model (the randomised copy)."""
    return replace(task, model=twin, fn=task_function(twin, task.task))


def _embedding_of(model: nn.Module, fn, ids: torch.Tensor) -> str:
    """The name of the nn.Embedding that reads the token ids themselves (not positions)."""
    seen: list[str] = []
    hooks = [m.register_forward_hook(lambda m, inp, out, name=name: seen.append(name)
                                     if inp and inp[0].shape == ids.shape and torch.equal(inp[0], ids) else None)
             for name, m in model.named_modules() if isinstance(m, nn.Embedding)]
    try:
        with torch.no_grad():
            fn(ids)
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise RecipeError("explain: no embedding layer reads this model's token ids; token attributions need one")
    return seen[0]


# ---------------------------------------------------------------- the methods
def _occlusion_window(x: torch.Tensor, kind: str, tokens: bool) -> tuple[tuple, tuple]:
    shape = tuple(x.shape[1:])
    if tokens or len(shape) == 1:
        return (1,) * len(shape), (1,) * len(shape)
    if len(shape) == 3:  # (C, H, W): squares of about 1/7 of the side, half-overlapping
        k = max(1, round(shape[1] / 7))
        return (shape[0], k, k), (shape[0], max(1, k // 2), max(1, k // 2))
    return (shape[0], 3), (shape[0], 1)  # (C, L) signals: 3 steps wide


def attribute(task: Task, method: str, x: Optional[torch.Tensor] = None, target=None,
              extra: Optional[tuple] = None) -> torch.Tensor:
    """Attributions of `method` for inputs x (default: the task's), one per input feature: shaped as x
    for real-valued inputs, (n, L) for token ids."""
    attr = captum().attr
    x = task.x if x is None else x
    target = task.target if target is None else target
    extra = task.extra if extra is None else extra
    fn = task.fn
    if task.tokens:
        layer = dict(task.model.named_modules())[task.embedding]
        if method == "saliency":
            g = attr.LayerGradientXActivation(fn, layer, multiply_by_inputs=False).attribute(x, target=target)
            return g.norm(dim=-1)
        if method == "integrated_gradients":
            a = attr.LayerIntegratedGradients(fn, layer).attribute(
                x, baselines=torch.full_like(x, task.baseline), target=target, n_steps=IG_STEPS)
            return a.sum(-1)
        if method == "occlusion":
            return attr.Occlusion(fn).attribute(x, sliding_window_shapes=(1,), baselines=task.baseline, target=target)
    else:
        kw = dict(target=target, additional_forward_args=extra or None)
        if method == "saliency":
            return attr.Saliency(fn).attribute(x, abs=True, **kw)
        if method == "integrated_gradients":
            return attr.IntegratedGradients(fn).attribute(x, baselines=float(task.baseline), n_steps=IG_STEPS,
                                                          internal_batch_size=max(len(x), 64), **kw)
        if method == "occlusion":
            window, strides = _occlusion_window(x, task.kind, False)
            return attr.Occlusion(fn).attribute(x, sliding_window_shapes=window, strides=strides,
                                                baselines=float(task.baseline), **kw)
    raise RecipeError(f"--method: '{method}' is not one of {', '.join(METHODS)}")


# ---------------------------------------------------------------- the checks
@torch.no_grad()
def _curve_point(task: Task, x: torch.Tensor) -> tuple[Optional[float], float]:
    """(accuracy against the true labels, mean score of the explained target) of inputs x."""
    out = task.fn(x, *task.extra)
    if task.classifier:
        p = out.softmax(1).gather(1, task.target[:, None])[:, 0]
        return float((out.argmax(1) == task.labels).float().mean()), float(p.mean())
    score = out if out.dim() == 1 else out.gather(1, task.target[:, None])[:, 0]
    return None, float(score.mean())


def _remove(x: torch.Tensor, order: torch.Tensor, k: int, baseline) -> torch.Tensor:
    """x with the first k features of each row's `order` (over the flattened features) set to baseline."""
    flat = x.reshape(len(x), -1).clone()
    if k:
        flat.scatter_(1, order[:, :k], baseline)
    return flat.reshape(x.shape)


def _area(fractions, ys) -> float:
    return float(np.trapezoid(ys, fractions)) if hasattr(np, "trapezoid") else float(np.trapz(ys, fractions))


def deletion_test(task: Task, attributions: torch.Tensor, seed: int = 0) -> dict:
    """Accuracy and target score as the top-k attributed features are removed, against random removal."""
    a = attributions.reshape(len(task.x), -1)
    D = a.shape[1]
    ks = sorted({round(f * D) for f in FRACTIONS})
    fractions = [k / D for k in ks]
    order = a.argsort(dim=1, descending=True)
    g = torch.Generator().manual_seed(seed + 7)
    randoms = [torch.stack([torch.randperm(D, generator=g) for _ in range(len(a))]).to(a.device)
               for _ in range(RANDOM_ORDERS)]
    acc, score, acc_r, score_r = [], [], [], []
    for k in ks:
        ac, sc = _curve_point(task, _remove(task.x, order, k, task.baseline))
        rs = [_curve_point(task, _remove(task.x, r, k, task.baseline)) for r in randoms]
        acc.append(ac)
        score.append(sc)
        acc_r.append(None if ac is None else float(np.mean([r[0] for r in rs])))
        score_r.append(float(np.mean([r[1] for r in rs])))
    out = {"fractions": fractions, "features": D, "score": score, "score_random": score_r,
           "forward_samples": len(ks) * (1 + RANDOM_ORDERS) * len(task.x),
           "area_score": _area(fractions, score_r) - _area(fractions, score),
           "score_is": "mean softmax probability of the explained class" if task.classifier else
                       ("minus the reconstruction error (MSE)" if task.target is None else "the model's output")}
    if task.classifier:
        out.update(accuracy=acc, accuracy_random=acc_r, area_accuracy=_area(fractions, acc_r) - _area(fractions, acc))
    out["faithful"] = bool(out.get("area_accuracy", out["area_score"]) > 0 and out["area_score"] > 0)
    return out


def _spearman(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    from scipy.stats import spearmanr

    rows = []
    flat = [t.reshape(len(t), -1).abs().double().cpu().numpy() for t in (a, b)]
    for u, v in zip(*flat):
        rho = spearmanr(u, v).statistic if u.std() > 0 and v.std() > 0 else float("nan")
        rows.append(float(rho))
    return rows


def randomized_copy(model: nn.Module, seed: int) -> nn.Module:
    """The same architecture with every layer's weights drawn afresh (reset_parameters), seeded."""
    twin = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        for m in twin.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return twin.eval()


def _perturb(inputs):
    noise = torch.randn_like(inputs) * 0.1  # on standardised inputs: a tenth of a feature's spread
    return noise, inputs - noise


def metrics(task: Task, method: str, attributions: torch.Tensor) -> dict:
    """Captum's infidelity (normalised attributions) and sensitivity_max, on real-valued inputs."""
    if task.tokens:
        return {"infidelity": None, "sensitivity_max": None,
                "note": "token ids are discrete: Gaussian perturbations do not apply"}
    m = captum().metrics
    kw = dict(target=task.target, additional_forward_args=task.extra or None)
    infid = m.infidelity(task.fn, _perturb, task.x, attributions, n_perturb_samples=INFID_PERTURB, normalize=True, **kw)
    def explainer(x, target=None, additional_forward_args=None):  # as Captum's: a tuple in, a tuple out
        extra = additional_forward_args
        extra = (extra,) if isinstance(extra, torch.Tensor) else extra
        if isinstance(x, tuple):
            return (attribute(task, method, x[0], target, extra),)
        return attribute(task, method, x, target, extra)

    sens = m.sensitivity_max(explainer, task.x, perturb_radius=0.02, n_perturb_samples=SENS_PERTURB, **kw)
    return {"infidelity": float(infid.mean()), "sensitivity_max": float(sens.mean())}


# ---------------------------------------------------------------- the command
def explain(run_dir: str | Path, methods=METHODS, split: Optional[str] = None, n: int = 16, target: str = "predicted",
            checkpoint: Optional[str] = None, seed: int = 0, checks: bool = True) -> dict:
    """Explain `n` samples of a run's `split` (default test, else val) with each method, check the maps, bill the work, and write
    explain.json and explain.png into the run directory. Returns explain.json's content."""
    from ..train.load import load_trainer
    from ..measure.bill import BillRecord, carbon_model, make_bill
    from ..measure import Meter
    from ..models import count_params
    from ..run.rundir import RunDir
    from .figures import explain_picture

    captum()
    methods = list(methods)
    for m in methods:
        if m not in METHODS:
            raise RecipeError(f"--method: '{m}' is not one of {', '.join(METHODS)}")
    if target not in ("predicted", "true"):
        raise RecipeError(f"--target: '{target}' is not 'predicted' or 'true'")
    if n < 2:
        raise RecipeError(f"--n: {n} samples; explain needs at least 2")
    run = RunDir.open(run_dir)
    if run.kind == "quantized":
        raise RecipeError(f"explain: '{run.path}' is quantized (int8 weights have no gradients); explain its parent")
    trainer = load_trainer(run, checkpoint)
    model = trainer.model.eval().requires_grad_(False)
    meta = trainer.data.meta
    from ..train.privacy import unwrap

    split = split or ("test" if trainer.data.test is not None else "val")
    data_split = unwrap(trainer.data.split(split))
    n = min(n, len(data_split))
    recipe = run.recipe()
    meter = Meter(carbon=carbon_model(recipe.run))
    meter.begin("fit")  # the bill's name for the metered work: here, explaining
    t0 = time.perf_counter()
    flops = 0
    quiet = warnings.catch_warnings()
    quiet.__enter__()
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    try:
        task = build_task(model, meta, data_split, n, target, seed)
        twin = randomized_copy(model, seed) if checks else None
        forward1 = count_flops(_forward, one_sample(task))[1]
        report: dict = {}
        maps: dict = {}
        for method in methods:
            tm = time.perf_counter()
            attr1 = count_flops(attribute, one_sample(task), method)[1]  # per sample: the work is linear in them
            maps[method] = a = attribute(task, method).detach()
            entry: dict = {}
            passes = {"attribution": n}  # per sample: attributions (a) and forward passes (f) of each part
            if checks:
                entry["deletion"] = deletion_test(task, a, seed)
                ar = attribute(twin_task(task, twin), method).detach()
                rhos = _spearman(a, ar)
                mean_rho = float(np.nanmean(rhos)) if not all(np.isnan(rhos)) else None
                entry["randomization"] = {"spearman": mean_rho, "per_sample": rhos, "threshold": RHO_THRESHOLD,
                                          "passes": mean_rho is not None and mean_rho < RHO_THRESHOLD}
                entry.update(metrics(task, method, a))
                passes.update(randomization=n, sensitivity=0 if task.tokens else (SENS_PERTURB + 1) * n)
                forwards = entry["deletion"]["forward_samples"] + (0 if task.tokens else (INFID_PERTURB + 1) * n)
            else:
                forwards = 0
            work = sum(passes.values())
            entry["flops"] = None if attr1 is None or forward1 is None else attr1 * work + forward1 * forwards
            entry["flops_per_attribution"] = attr1
            entry["time_s"] = time.perf_counter() - tm
            flops = None if flops is None or entry["flops"] is None else flops + entry["flops"]
            report[method] = entry
    finally:
        window = meter.end("fit", flops=flops)
        quiet.__exit__(None, None, None)
    bill = make_bill(meter, BillRecord(params=count_params(model), steps=0, samples_trained=0, device=trainer.device,
                                       precision=trainer.precision))
    picture = explain_picture(run.explain_picture, task, maps, meta, model, checks=report)
    train_bill = run.read("bill", required=False) or {}
    train_j = (train_bill.get("energy") or {}).get("total_j")
    result = {
        "run": str(run.path), "split": split, "n": n, "target": target, "kind": task.kind, "seed": seed,
        "checkpoint": checkpoint, "methods": report, "picture": picture.name,
        "inputs": {"shape": list(task.x.shape[1:]), "features": int(task.x[0].numel()),
                   "baseline": (f"token id {task.baseline}" if task.tokens else
                                "0: the train split's mean where inputs are standardised, else black / zero")},
        "explained": _explained(task),
        "settings": {"integrated_gradients_steps": IG_STEPS, "occlusion_window": list(_occlusion_window(task.x, task.kind, task.tokens)[0]),
                     "deletion_fractions": list(FRACTIONS), "random_orders": RANDOM_ORDERS,
                     "randomization": "every layer re-initialised (reset_parameters), seed + 1",
                     "infidelity": "8 Gaussian perturbations, std 0.1, normalised attributions",
                     "sensitivity_max": "4 perturbations, radius 0.02",
                     "flops": "torch's FlopCounterMode on one sample of each method, times the attributions made; "
                              "deletion and infidelity: forward passes times the counted forward FLOPs"},
        "cost": {"time_s": window.time_s, "flops": flops, "energy_j": window.energy_j,
                 "energy_method": window.energy_method, "co2e_g": window.co2e_g, "training_energy_j": train_j,
                 "share_of_training": window.energy_j / train_j if train_j else None},
        "bill": bill,
        "time_s": time.perf_counter() - t0,
    }
    run.write("explain", result)
    return result


def _explained(task: Task) -> str:
    return {"reconstruction": "minus the reconstruction error (MSE) of each original input, as a function of the input",
            "regression": "the model's first output",
            "language_model": "the logit of the target next character",
            "binary": "the target class's logit (+-z/2 of the model's one logit z)"}.get(task.task, "the target class's logit")


__all__ = ["explain", "attribute", "deletion_test", "randomized_copy", "build_task", "METHODS"]


def format_explain(r: dict) -> str:
    """explain.json as a few lines: per method, the checks' verdicts and numbers; then the cost."""
    from ..measure.bill import _si

    lines = [f"explained {r['n']} {r['split']} samples ({r['kind']}; target: {r['target']} class where there are "
             f"classes; {r['explained']})"]
    lines.append(f"{'method':<22} {'deletion area':>13} {'faithful':>8} {'rand. rho':>9} {'sane':>5} "
                 f"{'infidelity':>10} {'sensitivity':>11} {'FLOPs':>9} {'time':>7}")
    for m, e in r["methods"].items():
        d, rz = e.get("deletion") or {}, e.get("randomization") or {}
        area = d.get("area_accuracy", d.get("area_score"))

        def num(v, fmt):
            return "-" if v is None else format(v, fmt)
        lines.append(f"{m:<22} {num(area, '+.4f'):>13} {('yes' if d.get('faithful') else 'no') if d else '-':>8} "
                     f"{num(rz.get('spearman'), '.3f'):>9} {('yes' if rz.get('passes') else 'NO') if rz else '-':>5} "
                     f"{num(e.get('infidelity'), '.3g'):>10} {num(e.get('sensitivity_max'), '.3g'):>11} "
                     f"{_si(e.get('flops'), ''):>9} {e['time_s']:>6.1f}s")
    c = r["cost"]
    share = f", {c['share_of_training']:.1%} of the training's energy" if c.get("share_of_training") else ""
    lines.append(f"cost: {c['time_s']:.1f} s, {_si(c['flops'], 'FLOP')}, {_si(c['energy_j'], 'J')} "
                 f"({c['energy_method']}){share}")
    lines.append("deletion area: accuracy (else score) under random removal minus under removal by attribution, over "
                 "the removed fraction (> 0: faithful); sane: the maps change when the weights are re-initialised "
                 f"(Spearman rho < {RHO_THRESHOLD})")
    return "\n".join(lines)
