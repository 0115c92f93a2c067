"""`powertrain report RUN... [--out FILE.html]`: one self-contained HTML page about one or several runs.

Figures are matplotlib SVGs inlined as data URIs (each its own document, so no ids collide), pictures of the
run are inlined PNGs, the style is inline: the page needs no network and no script. Reads run directories
only (through RunDir), so it works on a run that is still training, or that crashed: it says so and shows
what there is.

One run: its state, the recipe (collapsed), learning curves against step, cumulative training energy and
FLOPs, the bill with time by phase, where the energy went (by component and by phase, each with its
method), the confusion matrix with per-class precision, recall and F1, the run's pictures, and, for a
derived run, its lineage with the parent's numbers. Several runs: the compare table, Pareto plots (metric
against energy, FLOPs and time, numbered points), every run's curves on shared axes, notes when runs mix
datasets or devices, then each run's own section.

>>> from powertrain.report_html import report
>>> report(["runs/digits-mlp-20250101-120000"])  # doctest: +SKIP
PosixPath('runs/digits-mlp-20250101-120000/report.html')
"""
from __future__ import annotations

import base64
import html
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import __version__
from .atomic import atomic_write
from .errors import RunDirError
from .bill import _si
from .report import LOWER_IS_BETTER, _parent_info, _short, headline_metric, load_row, mark_fronts, pareto_figure
from .rundir import RunDir

STATE_TEXT = {
    "complete": "complete",
    "training": "training now (process {pid} holds the run's lock): this page shows the run as it was when made",
    "interrupted": "interrupted at step {step} (a signal; the checkpoint at that step is whole): "
                   "continue with `powertrain resume {path}`",
    "failed": "did not finish: it stopped between checkpoints (a crash, an error or a kill) after step {step}; "
              "continue from the newest checkpoint with `powertrain resume {path}`",
}


# ---------------------------------------------------------------- what a run directory holds
@dataclass
class View:
    """Everything the page shows about one run, read from its directory."""

    run: RunDir
    n: int
    recipe_text: str
    raw: dict
    kind: str
    status: dict
    env: dict
    eval: Optional[dict]
    bill: Optional[dict]
    train: list = field(default_factory=list)  # metrics.jsonl step records
    val: list = field(default_factory=list)  # evaluation records
    windows: list = field(default_factory=list)  # epoch window records
    notes: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.run.path.name

    @property
    def data(self) -> str:
        return str((self.raw.get("data") or {}).get("name", "?"))

    @property
    def device(self) -> str:
        return str((self.bill or {}).get("device", {}).get("name") or self.env.get("device_name") or self.env.get("device", "?"))

    def cumulative(self, key: str) -> tuple[list, list]:
        """(steps, cumulative `key`) over the epoch windows, starting at (0, 0)."""
        steps, total, acc = [0], [0.0], 0.0
        for w in self.windows:
            acc += float(w.get(key) or 0.0)
            steps.append(w["step"])
            total.append(acc)
        return steps, total


def _safe_read(run: RunDir, name: str, notes: list) -> Optional[dict]:
    try:
        return run.read(name, required=False)
    except RunDirError as e:
        notes.append(str(e))
        return None


def load_view(path: str | Path, n: int = 1) -> View:
    run = RunDir.open(path)
    notes: list = []
    text = run.recipe_file.read_text(errors="replace")
    raw = run.raw_recipe()
    try:
        records = run.metrics()
    except RunDirError as e:
        records, _ = [], notes.append(str(e))
    v = View(run=run, n=n, recipe_text=text, raw=raw, kind=run.kind, status=run.status(),
             env=_safe_read(run, "env", notes) or {}, eval=_safe_read(run, "eval", notes),
             bill=_safe_read(run, "bill", notes), notes=notes)
    for r in records:
        if "val" in r:
            v.val.append(r)
        elif r.get("window") == "epoch":
            v.windows.append(r)
        elif "loss" in r:
            v.train.append(r)
    return v


# ---------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "powertrain", "font.size": 9})
    return plt


def _img(fig, alt: str, tight: bool = True) -> str:
    """A figure as an inline SVG image (a data URI: its own document, so ids never collide). `tight`
    crops to what was drawn (one more layout pass: figures with a fixed layout skip it)."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight" if tight else None)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img class="fig" alt="{html.escape(alt)}" src="data:image/svg+xml;base64,{data}">'


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
        labels = [f"{name}\n{method}" for name, _, method in items][::-1]
        vals = [x for _, x, _ in items][::-1]
        colors = [_method_color(m) for _, _, m in items][::-1]
        ax.barh(labels, vals, color=colors)
        for i, x in enumerate(vals):
            ax.text(x, i, f" {x:.3g} J ({x / total:.0%})", va="center", fontsize=8)
        ax.set_xlim(0, max(vals) * 1.4 if max(vals) > 0 else 1)
        ax.set_xlabel(f"joules (total {total:.3g} J)")
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


# ---------------------------------------------------------------- HTML pieces
def esc(x) -> str:
    return html.escape(str(x))


def num(x, unit: str = "") -> str:
    """A number for a person: 50,826 / 1.21 GFLOP / 0.409 J / 5.46e-05 g; '-' for None."""
    if x is None:
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return esc(x)
    if isinstance(x, int) and not unit:
        return f"{x:,}"
    if unit.strip() in ("FLOP", "B", "FLOP/s") or abs(x) >= 1e4:
        return esc(_si(x, unit.strip()))
    text = f"{x:.3g}"
    return f"{text}{' ' if unit.strip() else ''}{unit.strip()}"


def table(head: list[str], rows: list[list], cls: str = "") -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    thead = f"<thead><tr>{th}</tr></thead>" if any(head) else ""  # a key-value table has no header
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{thead}<tbody>{body}</tbody></table>'


def section(sid: str, title: str, body: str, cls: str = "") -> str:
    return f'<section id="{esc(sid)}" class="{cls}"><h2>{esc(title)}</h2>\n{body}\n</section>\n'


def _state_line(v: View) -> str:
    s = v.status
    return STATE_TEXT[s["state"]].format(pid=s.get("pid"), step=s.get("step"), path=v.run.path)


def summary_html(v: View) -> str:
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(v.run.started))
    rows = [["run", f"<code>{esc(v.run.path)}</code>"], ["recipe", esc(v.raw.get("name", "?"))],
            ["kind", esc(v.kind)], ["state", esc(_state_line(v))], ["started", esc(started)],
            ["data / model", esc(f"{v.data} / {(v.raw.get('model') or {}).get('name', '?')}")],
            ["device", esc(v.device)],
            ["versions", esc(f"powertrain {v.env.get('powertrain', '?')}, torch {v.env.get('torch', '?')}")]]
    if v.eval:
        for split in ("test", "val"):
            m = v.eval.get(split) or {}
            if m:
                rows.append([f"{split} metrics", esc("  ".join(f"{k} {x:.4g}" for k, x in m.items()
                                                               if isinstance(x, (int, float))))])
        rows.append(["stopped", esc(f"{v.eval.get('stop_reason', '?')} at step {v.eval.get('step', '?')}")])
    body = table(["", ""], rows, "kv")
    if v.notes:
        body += "".join(f'<p class="note">note: {esc(n)}</p>' for n in v.notes)
    return body


def unfinished_html(v: View) -> str:
    s = v.status
    ck = s.get("checkpoint")
    said = {"failed": "it failed", "interrupted": "it was interrupted", "training": "it is still training"}
    lines = [f"<p><b>This run has no eval.json: {said.get(s['state'], s['state'])}.</b> {esc(_state_line(v))}</p>",
             f"<p>newest checkpoint: <code>{esc(ck.name) if ck else 'none yet'}</code>; "
             f"{len(v.train)} step records, {len(v.val)} evaluations and {len(v.windows)} epoch windows in metrics.jsonl. "
             f"What follows is what there is so far.</p>"]
    last = sorted(v.train + v.val, key=lambda r: r["step"])[-8:]
    if last:
        rows = [[esc(r["step"]), esc(r.get("epoch", "")),
                 esc(json.dumps({k: (round(x, 5) if isinstance(x, float) else x) for k, x in
                                 (r.get("val") or r).items() if k not in ("step", "epoch", "confusion_matrix")}))]
                for r in last]
        lines.append("<p>the last records of metrics.jsonl:</p>" + table(["step", "epoch", "record"], rows))
    return "".join(lines)


def bill_html(v: View) -> str:
    b = v.bill
    if not b:
        return "<p>No bill.json yet: the bill is written when training ends.</p>"
    fl, t, e = b.get("flops") or {}, b.get("time_s") or {}, b.get("energy") or {}
    mfu = b.get("mfu") or {}
    peak = mfu.get("peak") or {}
    rows = [
        ["parameters", num(b.get("params"))],
        ["FLOPs / sample (forward)", num(fl.get("per_sample_forward"), "FLOP")],
        ["training FLOPs", f"{num(fl.get('train_total'), 'FLOP')} over {num(b.get('steps'))} steps, {num(b.get('samples_trained'))} samples"],
        ["time", num(t.get("total"), " s")],
        ["throughput", f"{num((b.get('throughput') or {}).get('samples_per_s'))} samples/s"],
        ["MFU", (f"{mfu['value']:.2%} of {num(peak.get('flops_per_s'), 'FLOP/s')} ({esc(peak.get('source', ''))})"
                 if mfu.get("value") is not None else esc(mfu.get("note") or "-"))],
        ["peak memory", f"{num((b.get('peak_memory') or {}).get('peak_bytes'), 'B')} ({esc((b.get('peak_memory') or {}).get('method', ''))})"],
        ["energy", f"{num(e.get('total_j'), ' J')} <span class='method'>[{esc(e.get('method', '?'))}]</span>"],
        ["J / training sample", num(b.get("j_per_train_sample"), " J")],
        ["J / inference sample", num(b.get("j_per_inference_sample"), " J")],
        ["CO2e", f"{num(b.get('co2e_g'), ' g')} ({esc(((e.get('carbon') or {}).get('intensity') or {}).get('region', ''))})"],
    ]
    if b.get("cost") is not None:
        rows.append(["electricity cost", num(b["cost"])])
    body = table(["", ""], rows, "kv")
    fig = phase_figure(b)
    if fig:
        body += fig
    notes = e.get("notes") or []
    body += "".join(f'<p class="note">note: {esc(n)}</p>' for n in notes)
    return body


def energy_html(v: View) -> str:
    if not v.bill:
        if v.windows:
            total = sum(float(w.get("energy_j") or 0) for w in v.windows)
            method = v.windows[-1].get("energy_method", "?")
            return f"<p>No bill yet. The closed epoch windows so far used {num(total, ' J')} [{esc(method)}].</p>"
        return "<p>No bill yet, and no epoch window closed.</p>"
    fig = energy_figure(v.bill)
    comps = (v.bill.get("energy") or {}).get("components") or {}
    rows = [[esc(k), num(c.get("energy_j"), " J"), f"<span class='method'>{esc(c.get('method'))}</span>"] for k, c in comps.items()]
    return (fig or "") + table(["component", "energy", "how it was obtained"], rows)


def confusion_html(v: View) -> Optional[str]:
    for split in ("test", "val"):
        m = (v.eval or {}).get(split) or {}
        cm = m.get("confusion_matrix")
        if cm:
            break
    else:
        if v.val and v.val[-1]["val"].get("confusion_matrix"):
            split, cm = f"val (step {v.val[-1]['step']})", v.val[-1]["val"]["confusion_matrix"]
        else:
            return None
    rows = [[esc(r["class"]), f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", esc(r["support"])]
            for r in per_class(cm)]
    return (f'<div class="row">{confusion_figure(cm, split)}'
            f'<div>{table(["class", "precision", "recall", "F1", "support"], rows, "narrow")}</div></div>')


def pictures_html(v: View) -> Optional[str]:
    items = []
    for p in v.run.pictures():
        rel = p.relative_to(v.run.path)
        mime = "image/svg+xml" if p.suffix.lower() == ".svg" else "image/jpeg" if p.suffix.lower() in (".jpg", ".jpeg") else "image/png"
        data = base64.b64encode(p.read_bytes()).decode()
        items.append(f'<figure><img class="pic" alt="{esc(rel)}" src="data:{mime};base64,{data}">'
                     f"<figcaption>{esc(rel)}</figcaption></figure>")
    return "".join(items) or None


def lineage_html(v: View) -> Optional[str]:
    info = _parent_info(v.run.path)
    if not info or not info.get("parent"):
        return None
    parent = Path(info["parent"])
    pv = None
    try:
        pv = load_view(parent)
    except (RunDirError, OSError) as e:
        return f"<p>{esc(v.kind)} from <code>{esc(parent)}</code>, which cannot be read ({esc(e)}).</p>"
    metric = headline_metric((v.eval or {}).get("test")) or headline_metric((pv.eval or {}).get("test"))

    def figures(x: View) -> list:
        b, m = x.bill or {}, (x.eval or {}).get("test") or {}
        return [num(m.get(metric)) if metric else "-", num(b.get("params")), num((b.get("flops") or {}).get("train_total"), "FLOP"),
                num((b.get("energy") or {}).get("total_j"), " J"), num((b.get("time_s") or {}).get("total"), " s"),
                num(b.get("j_per_inference_sample"), " J")]

    head = ["", f"test {metric or 'metric'}", "params", "training FLOPs", "training energy", "time", "J / inference sample"]
    rows = [[f"parent: <code>{esc(pv.name)}</code> ({esc(pv.kind)})", *figures(pv)],
            [f"this run: <code>{esc(v.name)}</code> ({esc(v.kind)})", *figures(v)]]
    settings = info.get("settings") or {}
    how = esc(info.get("method", "derived")) + (f" with {esc(json.dumps(settings))}" if settings else "")
    return (f"<p>This run is derived from <code>{esc(parent)}</code> by {how}. Its own cost is below; "
            f"the compare table adds the parent's training to it.</p>" + table(head, rows))


def run_sections(v: View, prefix: str = "", metric: Optional[str] = None) -> str:
    """The sections of one run; ids are prefixed (run2-curves) when the page holds several runs."""
    out = [section(f"{prefix}summary", "summary", summary_html(v), "warn" if v.status["state"] != "complete" else "")]
    if v.status["state"] != "complete":
        out.append(section(f"{prefix}unfinished", "unfinished run", unfinished_html(v), "warn"))
    out.append(section(f"{prefix}recipe", "recipe",
                       f"<details><summary>recipe.yaml (resolved: every default filled in)</summary>"
                       f"<pre>{esc(v.recipe_text)}</pre></details>"))
    out.append(section(f"{prefix}curves", "learning curves",
                       "<p>Against step, and against the cumulative energy and FLOPs of the training steps (the "
                       "Meter's epoch windows; an evaluation between two window ends is placed by linear "
                       "interpolation).</p>" + curves_figure([v], metric)))
    out.append(section(f"{prefix}bill", "bill", bill_html(v)))
    out.append(section(f"{prefix}energy", "where the energy went", energy_html(v)))
    for sid, title, body in ((f"{prefix}confusion", "confusion matrix and per-class scores", confusion_html(v)),
                             (f"{prefix}pictures", "pictures", pictures_html(v)),
                             (f"{prefix}lineage", "lineage", lineage_html(v))):
        if body:
            out.append(section(sid, title, body))
    return "".join(out)


# ---------------------------------------------------------------- several runs
def compare_html(views: list[View], metric: str, split: str) -> tuple[str, list]:
    rows, left_out = [], []
    for v in views:
        if v.status["state"] != "complete":
            left_out.append(f"{v.n} {v.name}: {v.status['state']} (no eval.json)")
            continue
        try:
            row = load_row(v.run.path, metric, split)
        except RunDirError as e:
            left_out.append(f"{v.n} {v.name}: {e}")
            continue
        row["n"] = v.n
        rows.append(row)
    mark_fronts(rows, metric)
    head = ["#", "run", f"{split} {metric}", "params", "train FLOPs", "time", "energy", "CO2e", "Pareto", "energy method"]
    body = []
    for r in rows:
        front = "".join(m for k, m in (("energy_j", "E"), ("train_flops", "F"), ("time_s", "T")) if r.get(f"pareto_{k}"))
        name = esc(r["run"]) + (f" <small>({esc(r['method'])} of {esc(Path(r['parent']).name)})</small>" if r.get("method") else "")
        body.append([esc(r["n"]), name, num(r["metric"]), num(r["params"]), num(r["train_flops"], "FLOP"), num(r["time_s"], " s"),
                     num(r["energy_j"], " J"), num(r["co2e_g"], " g"), front or "", f"<span class='method'>{esc(r['energy_method'])}</span>"])
    text = table(head, body)
    text += ("<p class='note'>Pareto: E, F, T = on the front of the metric against energy, FLOPs, time (one front per "
             f"dataset; {'lower' if metric in LOWER_IS_BETTER else 'higher'} {esc(metric)} is better). A derived run's "
             "costs include its parents' training.</p>")
    text += "".join(f"<p class='note'>not compared: {esc(x)}</p>" for x in left_out)
    return text, rows


def mix_notes(views: list[View]) -> list[str]:
    notes = []
    data = sorted({v.data for v in views})
    if len(data) > 1:
        notes.append(f"these runs use {len(data)} datasets ({', '.join(data)}): a metric compares only within one "
                     f"dataset, so each has its own Pareto front and colour")
    devices = sorted({v.device for v in views})
    if len(devices) > 1:
        notes.append(f"these runs ran on {len(devices)} devices ({'; '.join(devices)}): time and energy depend on the device")
    methods = sorted({(v.bill or {}).get("energy", {}).get("method") for v in views if v.bill} - {None})
    if len(methods) > 1:
        notes.append(f"energy was obtained in {len(methods)} ways ({'; '.join(methods)}): measured and estimated "
                     f"figures are not equally trustworthy")
    return notes


# ---------------------------------------------------------------- the page
STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1320px;padding:0 20px 40px;color:#222}
h1{font-size:1.45em;margin:18px 0 4px} h2{font-size:1.12em;margin:0 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
h3{font-size:1.05em} section{margin:18px 0;padding:10px 14px;background:#fff;border:1px solid #e3e3e3;border-radius:6px}
section.warn{border-color:#e0a800;background:#fffbea} .sub{color:#666;margin:0 0 10px}
table{border-collapse:collapse;margin:6px 0;font-size:.9em} th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3} td{white-space:nowrap} td .method,td small,table.kv td{white-space:normal} table.kv td:first-child{color:#555;white-space:nowrap} table.narrow td{text-align:right}
img.fig{max-width:100%;height:auto;display:block;margin:6px 0} img.pic{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}
figure{display:inline-block;margin:6px 12px 6px 0;vertical-align:top} figcaption{font-size:.85em;color:#555}
pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:.85em;max-height:480px} .method{color:#8a5a00;font-size:.9em}
.note{color:#555;font-size:.9em;margin:4px 0} .row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.row img.fig{max-width:560px} details.run>summary{font-size:1.15em;font-weight:600;cursor:pointer;margin:14px 0 4px}
nav a{margin-right:12px} code{font-size:.92em}
"""


def render(run_dirs: list[str | Path], metric: Optional[str] = None, split: str = "test") -> str:
    """The report page's HTML for `run_dirs` (one or several)."""
    if not run_dirs:
        raise RunDirError("report: give at least one run directory")
    pre, expanded = "", []
    for p in run_dirs:  # a sweep directory: its summary first, then its baseline and finished trials as runs
        if (Path(p) / "sweep.json").is_file():
            from .sweep_report import sweep_html, sweep_runs

            pre += sweep_html(p)
            expanded += sweep_runs(p)
        else:
            expanded.append(p)
    run_dirs = expanded
    if not run_dirs:
        raise RunDirError("report: the sweep has no finished trial yet")
    views = [load_view(p, i + 1) for i, p in enumerate(run_dirs)]
    made = time.strftime("%Y-%m-%d %H:%M")
    if len(views) == 1:
        v = views[0]
        title = f"powertrain report: {v.name}"
        body = run_sections(v)
        sub = f"{esc(v.raw.get('name', ''))} · {esc(v.kind)} · {esc(v.status['state'])}"
    else:
        metric = metric or _common_metric(views, split)
        title = f"powertrain report: {len(views)} runs"
        sub = f"{len(views)} runs · {split} {esc(metric)}"
        table_html, rows = compare_html(views, metric, split)
        notes = mix_notes(views)
        body = section("compare", "compare", table_html + "".join(f"<p class='note'>note: {esc(n)}</p>" for n in notes))
        if rows:
            keys = ("energy_j", "train_flops", "time_s") + (("size_bytes",) if any(r.get("method") for r in rows) else ())
            fig = pareto_figure(rows, metric, split, keys=keys, key_text=False, ncols=2 if len(keys) == 4 else 3)
            body += section("pareto", "Pareto plots",
                            "<p>Each point is numbered as in the compare table; lines join each dataset's front.</p>" + _img(fig, "Pareto plots"))
        body += section("all-curves", "learning curves of all runs",
                        f"<p>Train and validation loss, and validation {esc(metric)}, of every run on shared axes "
                        f"(numbered as in the table).</p>" + curves_figure(views, metric))
        if notes:
            body += section("notes", "notes", "".join(f"<p>{esc(n)}</p>" for n in notes))
        for v in views:
            state = "" if v.status["state"] == "complete" else f" ({esc(v.status['state'])})"
            body += (f'<details class="run" id="run{v.n}"><summary>{v.n}. {esc(v.name)}{state}</summary>'
                     f"{run_sections(v, prefix=f'run{v.n}-', metric=metric)}</details>")
    body = pre + body
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            f"<h1>{esc(title)}</h1><p class=\"sub\">{sub} · made {made} by powertrain {__version__}</p>\n{body}</body></html>\n")


def _common_metric(views: list[View], split: str) -> str:
    """The headline metric most of the finished runs report (accuracy, R², ...)."""
    names = [headline_metric((v.eval or {}).get(split)) for v in views if v.eval]
    names = [n for n in names if n]
    return max(dict.fromkeys(names), key=names.count) if names else "loss"


def report(run_dirs: list[str | Path], out: Optional[str | Path] = None, metric: Optional[str] = None,
           split: str = "test") -> Path:
    """Write the report page; default: report.html in the run directory (one run) or in the current folder."""
    text = render(run_dirs, metric, split)
    path = Path(out) if out else RunDir(run_dirs[0]).report_file if len(run_dirs) == 1 else Path("report.html")
    if path.is_dir():
        path = path / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


__all__ = ["report", "render", "per_class"]
