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

>>> from powertrain.report.html import report
>>> report(["runs/digits-mlp-20250101-120000"])  # doctest: +SKIP
PosixPath('runs/digits-mlp-20250101-120000/report.html')
"""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Optional

from ..settings import VERSION as __version__
from ..run.atomic import atomic_write
from ..errors import RunDirError
from ..measure.bill import _si, energy_summary
from .figures import confusion_figure, curves_figure, energy_figure, per_class, phase_figure
from .markup import _img, esc, num, section, table
from .sweep_page import sweep_html, sweep_runs
from .view import STATE_TEXT, View, load_view
from ..run.listing import headline_metric
from .compare import LOWER_IS_BETTER, _parent_info, load_row, mark_fronts, pareto_figure
from ..run.rundir import RunDir

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
        if v.status.get("state") == "complete" or v.eval:  # it ended, but has no bill: removed, or never written
            return ("<p>This run ended without a bill.json (removed, or never written by the tool that ran it); "
                    "what follows comes from metrics.jsonl.</p>")
        return "<p>No bill.json yet: the bill is written when training ends.</p>"
    fl, t, e = b.get("flops") or {}, b.get("time_s") or {}, b.get("energy") or {}
    mfu = b.get("mfu") or {}
    peak = mfu.get("peak") or {}
    rows = [
        ["parameters", num(b.get("params"))],
        ["FLOPs / sample (forward)", num(fl.get("per_sample_forward"), "FLOP")],
        ["training FLOPs", f"{num(fl.get('train_total'), 'FLOP')} over {num(b.get('steps'))} steps, {num(b.get('samples_trained'))} samples"],
        ["time", num(t.get("total"), " s")],
        ["throughput", f"{esc(_si((b.get('throughput') or {}).get('samples_per_s')))} samples/s, "
                       f"{esc(_si((b.get('throughput') or {}).get('model_flops_per_s'), 'FLOP/s'))}"],
        ["MFU", (f"{mfu['value']:.2%} of {num(peak.get('flops_per_s'), 'FLOP/s')} ({esc(peak.get('source', ''))})"
                 if mfu.get("value") is not None else esc(mfu.get("note") or "-"))],
        ["peak memory", f"{num((b.get('peak_memory') or {}).get('peak_bytes'), 'B')} ({esc((b.get('peak_memory') or {}).get('method', ''))})"],
        ["energy", f"{num(e.get('total_j'), ' J')}, {esc(energy_summary(e))} "
                   f"<span class='method'>[{esc(e.get('method', '?'))}]</span>"],
        ["J / training sample", num(b.get("j_per_train_sample"), " J")],
        ["J / inference sample", num(b.get("j_per_inference_sample"), " J")],
        ["CO2e", f"{num(b.get('co2e_g'), ' g')} ({esc(((e.get('carbon') or {}).get('intensity') or {}).get('region', ''))})"],
    ]
    if b.get("cost") is not None:
        rows.append(["electricity cost", num(b["cost"])])
    floor = b.get("floor")
    if floor and floor.get("energy_j") is not None:  # the line format_bill prints
        eff = f" (this run: {floor['efficiency']:.2%} of that efficiency)" if floor.get("efficiency") else ""
        rows.append(["physical floor", esc(f"{_si(floor['energy_j'], 'J')} at peak FLOP/J{eff}")])
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
                     num(r["energy_j"], " J"), num(r["co2e_g"], " g"), front or "", f"{esc(r.get('energy_summary') or '')} <span class='method'>{esc(r['energy_method'])}</span>"])
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
