"""The report's figures (inline SVG): learning curves against step, energy and FLOPs; time by phase;
energy by component and phase; the confusion matrix."""
from __future__ import annotations

from typing import Optional

from .compare import _short
from .markup import _img, _plt
from .view import View


def _xscale(ax, values) -> None:
    """A log x axis where the values span more than ~2 decades; short SI ticks (1.2M, 500k) otherwise."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    pos = [x for x in values if x and x > 0]
    if pos and max(pos) > 50 * min(pos):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _short(x)))


def _interp(x: float, xs: list, ys: list) -> Optional[float]:
    """ys at x, linear between the points; None beyond the last one (not measured yet)."""
    if not xs or x > xs[-1]:
        return None
    import numpy as np

    return float(np.interp(x, xs, ys))


AXES = (("step", "step"), ("energy_j", "cumulative training energy (J)"), ("flops", "cumulative training FLOPs"))


def _series(v: View, records: list, value) -> dict:
    """{axis: (xs, ys)} of `value(record)` against step, cumulative energy and FLOPs."""
    out = {}
    pts = [(r["step"], value(r)) for r in records if value(r) is not None]
    out["step"] = ([s for s, _ in pts], [y for _, y in pts])
    for key in ("energy_j", "flops"):
        xs, cum = v.cumulative(key)
        mapped = [(_interp(s, xs, cum), y) for s, y in pts]
        mapped = [(x, y) for x, y in mapped if x is not None and (x > 0 or key == "step")]
        out[key] = ([x for x, _ in mapped], [y for _, y in mapped])
    return out


def curves_figure(views: list[View], metric: Optional[str]) -> str:
    """Train loss and validation loss (top row) and the validation metrics (bottom row) against step,
    cumulative training energy and FLOPs. One run: every validation metric; several: `metric` of each."""
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(14, 6.4), squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.84, bottom=0.09, top=0.97, wspace=0.22, hspace=0.32)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10
    single = len(views) == 1
    for v, color in zip(views, colors):
        tag = "" if single else f"{v.n} "
        loss = _series(v, v.train, lambda r: r.get("loss"))
        vloss = _series(v, v.val, lambda r: r["val"].get("loss"))
        names = ([k for k, x in (v.val[-1]["val"] if v.val else {}).items()
                  if k != "loss" and isinstance(x, (int, float))] if single else [metric] if metric else [])
        for col, (key, label) in enumerate(AXES):
            ax = axes[0][col]
            ax.plot(*loss[key], color=color, lw=1.2, label=f"{tag}train loss")
            ax.plot(*vloss[key], color=color, lw=1.2, ls="--", marker="o", ms=3, label=f"{tag}val loss")
            ax2 = axes[1][col]
            for j, name in enumerate(names):
                s = _series(v, v.val, lambda r, name=name: r["val"].get(name))
                c = colors[j] if single else color
                ax2.plot(*s[key], color=c, marker="o", ms=3, lw=1.2, label=f"{tag}val {name}")
    for row in axes:
        for col, (key, label) in enumerate(AXES):
            ax = row[col]
            xs = [x for line in ax.get_lines() for x in line.get_xdata()]
            if not xs:
                why = "no epoch window closed yet" if key != "step" else "nothing logged yet"
                ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="0.4")
            elif key != "step" or not single:
                _xscale(ax, xs)
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss")
    axes[1][0].set_ylabel("validation metric" if single or not metric else f"val {metric}")
    for row in axes:  # one legend per row, right of the panels
        handles, labels = row[0].get_legend_handles_labels()
        if handles:
            row[2].legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.03, 1.0),
                          ncol=1 if len(handles) <= 12 else 2, borderaxespad=0)
    return _img(fig, "learning curves against step, energy and FLOPs", tight=False)


PHASES = ("data", "forward_backward", "optimizer", "eval", "checkpoint", "final_eval")


def phase_figure(bill: dict) -> Optional[str]:
    t = bill.get("time_s") or {}
    parts = [(k, float(t[k])) for k in PHASES if isinstance(t.get(k), (int, float))]
    parts += [(k, float(x)) for k, x in t.items() if k not in (*PHASES, "total", "fit") and isinstance(x, (int, float))]
    total = t.get("total")
    if not parts or not total:
        return None
    other = total - sum(x for _, x in parts)
    if other > 0:
        parts.append(("other (loop, metering, start-up)", other))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(parts) + 0.9))
    names, vals = [p[0] for p in parts], [p[1] for p in parts]
    ax.barh(names[::-1], vals[::-1], color="#4c72b0")
    for i, x in enumerate(vals[::-1]):
        ax.text(x, i, f" {x:.3g} s ({x / total:.0%})", va="center", fontsize=8)
    ax.set_xlabel(f"seconds (total {total:.3g} s; perf_counter around each phase)")
    ax.set_xlim(0, max(vals) * 1.35)
    ax.set_title("time by phase", fontsize=9)
    fig.tight_layout()
    return _img(fig, "time by phase")


WINDOW_NAMES = {"epoch": "training steps", "eval": "evaluations during fit", "checkpoint": "checkpoints",
                "final_eval": "final evaluation"}


def energy_figure(bill: dict) -> Optional[str]:
    """Energy by component and by phase (Meter windows), each bar labelled with how it was obtained."""
    e = bill.get("energy") or {}
    comps = [(k, c.get("energy_j") or 0.0, c.get("method", "?")) for k, c in (e.get("components") or {}).items()]
    total = e.get("total_j")
    if not comps or not total:
        return None
    windows = e.get("windows") or {}
    phases = [(WINDOW_NAMES[k], w.get("energy_j") or 0.0, w.get("energy_method", "?"))
              for k, w in windows.items() if k in WINDOW_NAMES]
    rest = total - sum(x for _, x, _ in phases)
    if phases and rest > 0:
        phases.append(("other (loop, metering, start-up)", rest, e.get("method", "?")))
    plt = _plt()
    rows = max(len(comps), len(phases))
    fig, axes = plt.subplots(1, 2 if phases else 1, figsize=(12, 0.5 * rows + 1.2), squeeze=False)
    for ax, items, title in ((axes[0][0], comps, "by component"), *(((axes[0][1], phases, "by phase"),) if phases else ())):
        methods = {method for _, _, method in items}
        same = methods.pop() if len(methods) == 1 else None  # one method for every bar: said once, under the axis
        labels = [name if same else f"{name}\n{method}" for name, _, method in items][::-1]
        vals = [x for _, x, _ in items][::-1]
        colors = [_method_color(m) for _, _, m in items][::-1]
        ax.barh(labels, vals, color=colors)
        for i, x in enumerate(vals):
            ax.text(x, i, f" {x:.3g} J ({x / total:.0%})", va="center", fontsize=8)
        ax.set_xlim(0, max(vals) * 1.4 if max(vals) > 0 else 1)
        ax.set_xlabel(f"joules (total {total:.3g} J)" + (f"\nevery bar: {same}" if same else ""))
        ax.set_title(f"energy {title} (orange: estimated, green: measured, purple: both)", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return _img(fig, "where the energy went")


def _method_color(method) -> str:
    m = str(method)
    if "measured" in m and "estimated" in m:
        return "#8172b3"
    return "#55a868" if "measured" in m else "#dd8452"


def per_class(cm: list[list[int]]) -> list[dict]:
    """Per-class precision, recall, F1 and support from a confusion matrix (rows: true class, columns: predicted).

    >>> [round(r["f1"], 3) for r in per_class([[3, 1], [0, 4]])]
    [0.857, 0.889]
    """
    n = len(cm)
    out = []
    for c in range(n):
        tp = cm[c][c]
        predicted = sum(cm[r][c] for r in range(n))
        actual = sum(cm[c])
        p = tp / predicted if predicted else 0.0
        r = tp / actual if actual else 0.0
        out.append({"class": c, "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": actual})
    return out


def confusion_figure(cm: list[list[int]], split: str) -> str:
    plt = _plt()
    n = len(cm)
    size = min(7.0, 2.2 + 0.42 * n)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if n <= 20:
        top = max(max(row) for row in cm) or 1
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i][j]), ha="center", va="center", fontsize=7 if n > 10 else 8,
                        color="white" if cm[i][j] > top / 2 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{split} confusion matrix", fontsize=9)
    if n <= 30:
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
    fig.tight_layout()
    return _img(fig, f"{split} confusion matrix")
