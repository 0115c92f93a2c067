"""Pictures of `powertrain explain` (attribution maps, one layout per data kind) and `powertrain audit`
(the attack's ROC curve against the bound the run's privacy implies). PNG files written atomically
into the run directory (matplotlib, Agg: no display needed)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..run.atomic import atomic_write

SIGNED = {"saliency": False, "integrated_gradients": True, "occlusion": True}
TITLES = {"saliency": "saliency |grad|", "integrated_gradients": "integrated gradients", "occlusion": "occlusion"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    _plt().close(fig)
    return path


def _labels(task, meta) -> list[str]:
    """'true 3 / pred 5' per sample (class names where the data has them)."""
    if task.task == "reconstruction":
        with torch.no_grad():
            return [f"error {-float(v):.3g}" for v in task.fn(task.x, *task.extra)]
    if not task.classifier:
        return [""] * len(task.x)
    with torch.no_grad():
        pred = task.fn(task.x, *task.extra).argmax(1)
    names = meta.class_names
    itos = getattr(meta.vocab, "itos", None) if task.task == "language_model" else None

    def name(i):
        i = int(i)
        if itos:
            return repr(itos[i]) if i < len(itos) else str(i)
        return names[i] if names and i < len(names) else str(i)
    return [f"true {name(t)} / pred {name(p)}" for t, p in zip(task.labels, pred)]


def explain_picture(path: Path, task, maps: dict, meta, model, checks: Optional[dict] = None) -> Path:
    """The attribution maps of `maps` ({method: tensor}) in the layout of the data kind, with a colour scale
    and, given `checks` (explain.json's "methods"), each method's verdicts under the maps."""
    return _save(explain_figure(task, maps, meta, checks), path)


def explain_figure(task, maps: dict, meta, checks: Optional[dict] = None):
    shape = tuple(task.x.shape[1:])
    if task.tokens:
        fig = _text(task, maps, meta)
    elif len(shape) == 3 or (task.kind == "reconstruction" and len(shape) >= 2):
        fig = _images(task, maps, meta)
    elif len(shape) == 2:
        fig = _signals(task, maps, meta)
    else:
        fig = _table(task, maps, meta)
    lines = [verdict_line(m, e) for m, e in (checks or {}).items()]
    if any(lines):
        fig.text(0.01, -0.005, "checks: " + "\n        ".join(x for x in lines if x), fontsize=7, va="top",
                 family="monospace")
    return fig


def verdict_line(method: str, e: dict) -> str:
    """One method's verdicts as explain's table prints them: deletion (faithful) and randomisation (sane)."""
    d, rz = e.get("deletion") or {}, e.get("randomization") or {}
    parts = []
    if d:
        area = d.get("area_accuracy", d.get("area_score"))
        parts.append(f"faithful {'yes' if d.get('faithful') else 'no'}"
                     + (f" (deletion area {area:+.3f})" if area is not None else ""))
    if rz:
        rho = rz.get("spearman")
        parts.append(f"sane {'yes' if rz.get('passes') else 'NO'}"
                     + (f" (rho {rho:.2f} to randomised weights; sane below {rz.get('threshold')})" if rho is not None else ""))
    return f"{TITLES.get(method, method)}: " + ", ".join(parts) if parts else ""


def _scale(fig, cmap: str, signed: bool, ax, orientation: str = "horizontal") -> None:
    """A colour scale for maps each scaled to its own largest |attribution| (so -1..1, or 0..1 for magnitudes)."""
    import matplotlib

    sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(-1.0 if signed else 0.0, 1.0), cmap=cmap)
    cb = fig.colorbar(sm, ax=ax, orientation=orientation, fraction=0.05, pad=0.02)
    cb.set_label("/ each map's max |attr.|", fontsize=6)
    cb.ax.tick_params(labelsize=6)


def _norm(a: np.ndarray, signed: bool) -> tuple[np.ndarray, float, float]:
    m = float(np.abs(a).max()) or 1.0
    return a, (-m if signed else 0.0), m


def _images(task, maps, meta):
    from ..train.figures import _to_pixels

    plt = _plt()
    n = min(8, len(task.x))
    x = task.x[:n].detach().float().cpu()
    if meta.normalization:  # back to the data's own units
        pixels = _to_pixels(x, meta.normalization).numpy()
    else:  # standardised per feature (or raw): each image scaled to its own range
        lo = x.flatten(1).min(1).values.view(-1, *[1] * (x.dim() - 1))
        hi = x.flatten(1).max(1).values.view(-1, *[1] * (x.dim() - 1))
        pixels = _to_pixels((x - lo) / (hi - lo).clamp_min(1e-8), None).numpy()
    labels = _labels(task, meta)
    methods = list(maps)
    fig, axes = plt.subplots(n, 1 + len(methods), figsize=(1.6 * (1 + len(methods)), 1.7 * n), squeeze=False)
    for i in range(n):
        ax = axes[i][0]
        img = pixels[i]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(labels[i] or "input", fontsize=7)
        for j, m in enumerate(methods):
            a = maps[m][i].detach().float().cpu().numpy()
            a = a.sum(0) if a.ndim == 3 else a.reshape(img.shape[:2]) if a.size == img.shape[0] * img.shape[1] else a
            a, lo, hi = _norm(a, SIGNED[m])
            axes[i][j + 1].imshow(a, cmap="bwr" if SIGNED[m] else "hot", vmin=lo, vmax=hi, interpolation="nearest")
            if i == 0:
                axes[i][j + 1].set_title(TITLES[m], fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if task.kind == "reconstruction":
        title = "attribution to minus the reconstruction error: red pixels lower the error, blue raise it"
    else:
        title = "attribution to the target class: red supports it, blue opposes it"
    fig.suptitle(title + " (saliency: magnitude)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    for j, m in enumerate(methods):  # after the layout: one scale under each method's column
        _scale(fig, "bwr" if SIGNED[m] else "hot", SIGNED[m], list(axes[:, j + 1]))
    return fig


def _signals(task, maps, meta):
    plt = _plt()
    n = min(6, len(task.x))
    labels = _labels(task, meta)
    methods = list(maps)
    fig, axes = plt.subplots(n, len(methods), figsize=(3.2 * len(methods), 1.6 * n), squeeze=False)
    x = task.x[:n].detach().float().cpu().numpy()
    for i in range(n):
        for j, m in enumerate(methods):
            ax = axes[i][j]
            a = maps[m][i].detach().float().cpu().numpy().sum(0)
            t = np.arange(len(a))
            scale = float(np.abs(a).max()) or 1.0
            span = float(np.ptp(x[i])) or 1.0
            base = float(x[i].min()) - 0.15 * span
            ax.bar(t, a / scale * 0.6 * span, bottom=base, width=1.0,
                   color=np.where(a >= 0, "#d62728", "#1f77b4"), alpha=0.55)
            for c in range(x.shape[1]):
                ax.plot(t, x[i, c], color="black", lw=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(TITLES[m], fontsize=8)
            if j == 0:
                ax.set_ylabel(labels[i], fontsize=6)
    fig.suptitle("signal (black) and its attribution along it (bars: red supports the target, blue opposes; "
                 "each sample's largest |attribution| is 0.6 of its signal's range)", fontsize=8)
    return fig


def _table(task, maps, meta):
    plt = _plt()
    names = list((meta.extra or {}).get("feature_names") or [f"x{i}" for i in range(task.x.shape[1])])
    methods = list(maps)
    A = {m: maps[m].detach().float().cpu().numpy().reshape(len(task.x), -1) for m in methods}
    key = "integrated_gradients" if "integrated_gradients" in A else methods[0]
    glob = {m: np.abs(a).mean(0) for m, a in A.items()}
    top = np.argsort(-glob[key])[:20][::-1]
    n = min(12, len(task.x))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, max(3.0, 0.3 * len(top) + 1.2)),
                                   gridspec_kw={"width_ratios": [1, 1.3]})
    h = 0.8 / len(methods)
    for j, m in enumerate(methods):
        g = glob[m] / (glob[m].max() or 1.0)
        ax1.barh(np.arange(len(top)) + j * h, g[top], height=h, label=TITLES[m])
    ax1.set_yticks(np.arange(len(top)) + 0.4 - h / 2)
    ax1.set_yticklabels([names[i] for i in top], fontsize=7)
    ax1.set_xlabel("mean |attribution| (each method scaled to its largest)")
    ax1.set_title("global: which columns matter", fontsize=9)
    ax1.legend(fontsize=7, loc="lower right")
    order = top[::-1]  # the most important column first, at the top, as on the left
    a = A[key][:n][:, order].T
    lim = float(np.abs(a).max()) or 1.0
    im = ax2.imshow(a, cmap="bwr", vmin=-lim, vmax=lim, aspect="auto")
    ax2.set_yticks(range(len(order)))
    ax2.set_yticklabels([names[i] for i in order], fontsize=7)
    labels = _labels(task, meta)
    ax2.set_xticks(range(n))
    ax2.set_xticklabels([lab.replace(" / ", "\n") for lab in labels[:n]], fontsize=5, rotation=90)
    ax2.set_title(f"per sample: {TITLES[key]} (red supports the target)", fontsize=9)
    cb = fig.colorbar(im, ax=ax2, fraction=0.04)
    cb.set_label("attribution", fontsize=7)
    fig.tight_layout()
    return fig


def _shown(ch: str) -> str:
    return {"\n": "⏎", "\t": "⇥", " ": "·"}.get(ch, ch if ch.isprintable() else "?")


def _text(task, maps, meta):
    plt = _plt()
    import matplotlib

    vocab = meta.vocab
    n = min(4, len(task.x))
    methods = list(maps)
    per_line = 64
    labels = _labels(task, meta)
    L = task.x.shape[1]
    lines_per = math.ceil(L / per_line)
    rows = n * len(methods) * lines_per
    fig = plt.figure(figsize=(per_line * 0.16 + 2.2, 0.32 * rows + 0.4 * n * len(methods) + 0.6))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    total_h = rows + n * len(methods) * 1.3 + 1.5
    ax.set_xlim(0, per_line + 14)
    ax.set_ylim(total_h, 0)
    y = 1.0
    what = "the next character" if task.task == "language_model" else "the target class"
    ax.text(0.2, y - 0.3, f"characters shaded by their attribution to {what} (red supports, blue opposes; "
            "saliency: magnitude)", fontsize=8)
    y += 0.8
    for i in range(n):
        text = vocab.decode(task.x[i].tolist()) if hasattr(vocab, "decode") else "".join(map(str, task.x[i].tolist()))
        for m in methods:
            a = maps[m][i].detach().float().cpu().numpy()
            lim = float(np.abs(a).max()) or 1.0
            cmap = matplotlib.colormaps["bwr" if SIGNED[m] else "Reds"]
            ax.text(0.2, y, f"sample {i + 1}, {TITLES[m]}: {labels[i]}", fontsize=7, color="#333333")
            y += 0.9
            for k, ch in enumerate(text[:L]):
                v = (a[k] / lim + 1) / 2 if SIGNED[m] else a[k] / lim
                col, row = k % per_line, k // per_line
                ax.text(0.5 + col, y + row, _shown(ch), fontsize=7, family="monospace", ha="center", va="center",
                        bbox=dict(boxstyle="square,pad=0.15", fc=cmap(float(v)), ec="none"))
            y += lines_per + 0.4
    signed = any(SIGNED[m] for m in methods)
    _scale(fig, "bwr" if signed else "Reds", signed, ax)
    return fig


# ---------------------------------------------------------------- the audit's ROC curve
def roc_picture(path: Path, fpr: np.ndarray, tpr: np.ndarray, auc: float, tpr_at: float,
                bound: Optional[dict], title: str) -> Path:
    """ROC of the attack, linear and log-log, with the highest ROC (epsilon, delta)-DP allows, if any."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    grid = np.logspace(-4, 0, 400)
    for ax, log in zip(axes, (False, True)):
        ax.plot(fpr, tpr, color="#d62728", lw=1.5, label=f"loss-threshold attack (AUC {auc:.3f})")
        ax.plot([1e-4, 1], [1e-4, 1], color="gray", ls=":", lw=1, label="chance")
        if bound is not None:
            eps, delta = bound["epsilon"], bound["delta"]
            ax.plot(grid, dp_roc_bound(grid, eps, delta), color="#1f77b4", ls="--", lw=1.2,
                    label=f"bound of (ε={eps:.3g}, δ={delta:g})-DP")
        ax.axvline(0.01, color="#999999", lw=0.6)
        ax.scatter([0.01], [max(tpr_at, 1e-4)], color="#d62728", s=12, zorder=3)
        ax.set_xlabel("false positive rate (non-members called members)")
        ax.set_ylabel("true positive rate (members found)")
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(1e-3, 1)
            ax.set_ylim(1e-3, 1)
        else:
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def dp_roc_bound(fpr: np.ndarray, epsilon: float, delta: float) -> np.ndarray:
    """The highest TPR any test of membership can reach at each FPR under (epsilon, delta)-DP
    (Kairouz et al. 2015): TPR <= min(e^eps FPR + delta, 1 - e^-eps (1 - delta - FPR), 1)."""
    fpr = np.asarray(fpr, dtype=float)
    e = math.exp(min(epsilon, 700.0))
    return np.clip(np.minimum(e * fpr + delta, 1 - (1 - delta - fpr) / e), 0, 1)
