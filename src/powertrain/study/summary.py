"""A sweep's summary: the trials, the Pareto front over the objectives, the trial chosen for a target,
the energy that pruning saved; written to SWEEP_DIR/summary.json and drawn in SWEEP_DIR/front.png."""
from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Optional

from ..run.atomic import write_json
from ..errors import RunDirError
from ..recipe.strict import load_yaml
from .journal import JournalDamaged
from .plan import human_energy
from .space import override
from ..run.records import read_json

COSTS = {"energy_j": ("energy", "total_j"), "flops": ("flops", "train_total"), "time_s": ("time_s", "total"),
         "params": ("params",), "co2e_g": ("co2e_g",)}


def measured(run_dir: Path) -> dict:
    """What a finished trial's run directory says: metrics of each split and the bill's costs."""
    ev, bill = read_json(run_dir / "eval.json"), read_json(run_dir / "bill.json")
    out = {"val": ev.get("val") or {}, "test": ev.get("test") or {}, "stop_reason": ev.get("stop_reason"),
           "steps": bill.get("steps"), "energy_method": bill.get("energy", {}).get("method"),
           "fit_energy_j": ((bill.get("energy", {}).get("windows") or {}).get("fit") or {}).get("energy_j")}
    for name, path in COSTS.items():
        v = bill
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        out[name] = v
    return out


def value_of(m: dict, name: str, split: str) -> Optional[float]:
    v = m.get(name) if name in COSTS else m.get(split, {}).get(name)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _dominates(a: list[float], b: list[float], signs: list[int]) -> bool:
    return all(s * x >= s * y for x, y, s in zip(a, b, signs)) and any(s * x > s * y for x, y, s in zip(a, b, signs))


def front(points: dict[int, list[float]], signs: list[int]) -> list[int]:
    """Keys of the points no other point dominates (sign +1: higher is better, -1: lower)."""
    return sorted(k for k, p in points.items() if not any(_dominates(q, p, signs) for j, q in points.items() if j != k))


def _saved(m: dict, total_steps: Optional[int]) -> Optional[float]:
    """Energy a pruned trial did not spend: its measured training J per step x the steps it skipped."""
    steps, fit_j = m.get("steps"), m.get("fit_energy_j")
    if not steps or fit_j is None or not total_steps or total_steps <= steps:
        return None
    return fit_j / steps * (total_steps - steps)


def command(sweep, overrides: list[str]) -> str:
    """The `powertrain train` line of a trial: the sweep's overrides that the trial does not change, then its own."""
    own = {o.partition("=")[0] for o in overrides}
    fixed = [o for o in sweep.cfg["overrides"] if o.partition("=")[0].strip() not in own]
    return shlex.join(["powertrain", "train", sweep.cfg["recipe"], *fixed, *overrides])


def _value(raw: dict, key: str):
    v = raw
    for part in key.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return v


def rows_from_folders(sweep) -> list[dict]:
    """The summary's rows read from SWEEP_DIR/trials/trial-NNNN/ alone: each trial's own settings (its
    recipe's value of every key of the space), its state (COMPLETE, PRUNED from eval.json's stop reason,
    INCOMPLETE without eval.json) and what it measured."""
    rows = []
    folders = sorted(p for p in sweep.trials_dir.glob("trial-*") if p.is_dir()) if sweep.trials_dir.is_dir() else []
    for folder in folders:
        try:
            number = int(folder.name.split("-", 1)[1])
            raw = load_yaml((folder / "recipe.yaml").read_text(encoding="utf-8"), str(folder / "recipe.yaml"))
        except Exception:  # noqa: BLE001  (not a trial folder we can read: left out of the table)
            continue
        own = [override(d.key, _value(raw, d.key)) for d in sweep.dims]
        m, state, error = None, "INCOMPLETE", "no eval.json: the trial did not finish"
        if (folder / "eval.json").is_file() and (folder / "bill.json").is_file():
            try:
                m = measured(folder)
                state = "PRUNED" if m.get("stop_reason") == "pruned" else "COMPLETE"
                error = None
            except RunDirError as e:
                error = str(e)
        rows.append({"number": number, "state": state, "overrides": own, "run_dir": str(folder), "error": error,
                     "measured": m, "pruned_at_step": (m or {}).get("steps") if state == "PRUNED" else None})
    return rows


def study_rows(sweep) -> list[dict]:
    """One row per trial of the sweep's study (its journal or database)."""
    study, _ = sweep.studies()
    rows = []
    for t in study.get_trials(deepcopy=False):
        m = t.user_attrs.get("measured")
        row = {"number": t.number, "state": t.state.name, "overrides": t.user_attrs.get("overrides", []),
               "run_dir": t.user_attrs.get("run_dir"), "error": t.user_attrs.get("error") or t.user_attrs.get("lost"),
               "measured": m, "pruned_at_step": t.user_attrs.get("pruned_at_step")}
        if m and row["pruned_at_step"] is not None:
            row["saved_energy_j"] = _saved(m, t.user_attrs.get("planned_steps"))
        rows.append(row)
    return rows


def summarize(sweep, png: bool = True, from_folders: bool = False) -> dict:
    """The sweep's summary from its study; with `from_folders`, when the study's journal is damaged, from
    the trial folders instead (`rows_from_folders`), said in the summary's "note"."""
    split, objs = sweep.cfg["split"], sweep.objectives
    signs = [1 if d == "maximize" else -1 for _, d in objs]
    note = None
    try:
        rows = study_rows(sweep)
    except JournalDamaged as e:
        if not from_folders:
            raise
        rows = rows_from_folders(sweep)
        note = f"{e}; this table was rebuilt from the {len(rows)} trial folders (their states read from eval.json)"
    done = {r["number"]: [value_of(r["measured"], n, split) for n, _ in objs] for r in rows if r["state"] == "COMPLETE"}
    pareto = front(done, signs)
    baseline = None
    if (sweep.path / "baseline" / "eval.json").is_file():
        baseline = measured(sweep.path / "baseline")
    chosen = choose(sweep, rows)
    saved = [r["saved_energy_j"] for r in rows if r.get("saved_energy_j")]
    spent = sum((r["measured"] or {}).get("energy_j") or 0 for r in rows if r["measured"])
    summary = {"sweep": str(sweep.path), "objectives": objs, "split": split, "target": sweep.cfg["target"],
               "trials": rows, "front": pareto, "chosen": chosen, "baseline": baseline,
               "energy": {"trials_j": spent, "saved_by_pruning_j": sum(saved), "pruned": len(saved),
                          "saved_note": "estimated: each pruned trial's measured training J per step x the steps it "
                                        "did not run"},
               "states": {s: sum(r["state"] == s for r in rows) for s in sorted({r["state"] for r in rows})},
               "note": note}
    if chosen and baseline:
        cost = next(n for n, _ in objs if n in COSTS) if any(n in COSTS for n, _ in objs) else None
        if cost and baseline.get(cost):
            summary["chosen"]["ratio_to_baseline"] = {cost: chosen["measured"][cost] / baseline[cost]}
    write_json(sweep.path / "summary.json", summary)
    if png and rows:
        summary["picture"] = str(plot_front(sweep, summary))
    return summary


def choose(sweep, rows: list[dict]) -> Optional[dict]:
    """Among the COMPLETE trials that reach the target, the one with the lowest first cost objective."""
    target, split = sweep.cfg["target"], sweep.cfg["split"]
    costs = [n for n, _ in sweep.objectives if n in COSTS] or ["energy_j"]  # no cost objective: the bill's energy
    if not target:
        return None
    name, op, bound = target
    ok = [r for r in rows if r["state"] == "COMPLETE" and (v := value_of(r["measured"], name, split)) is not None
          and (v >= bound if op == ">=" else v <= bound)]
    if not ok:
        return None
    best = min(ok, key=lambda r: value_of(r["measured"], costs[0], split))
    return {"number": best["number"], "run_dir": best["run_dir"], "measured": best["measured"],
            "overrides": best["overrides"], "command": command(sweep, best["overrides"]), "by": costs[0]}


def format_summary(s: dict) -> str:
    split, objs = s["split"], s["objectives"]
    metric = next(n for n, _ in objs if n not in COSTS)
    head = f"{'#':>3}  {'state':8} {split + ' ' + metric:>14} {'test ' + metric:>14} {'energy':>10} {'time s':>8}  settings"
    lines = ([f"note: {s['note']}"] if s.get("note") else []) + [head]
    running = [r["number"] for r in s["trials"] if r["state"] in ("RUNNING", "INCOMPLETE")]
    if running:
        many = len(running) > 1
        lines.insert(0, f"note: trial{'s' if many else ''} {', '.join(map(str, running))} {'are' if many else 'is'} "
                        f"still running in another worker (or {'were' if many else 'was'} cut short): this summary "
                        f"is partial; `powertrain sweep --resume {s['sweep']} --summary` once "
                        f"{'they finish' if many else 'it finishes'}")
    for r in s["trials"]:
        m = r["measured"] or {}
        v, t = value_of(m, metric, split), (m.get("test") or {}).get(metric)
        mark = "*" if r["number"] in s["front"] else " "
        lines.append(f"{r['number']:>3}{mark} {r['state']:8} {_f(v):>14} {_f(t):>14} "
                     f"{human_energy(m['energy_j']) if m.get('energy_j') is not None else '-':>10} "
                     f"{_f(m.get('time_s'), '.1f'):>8}  {' '.join(r['overrides'])}"
                     + (f"  ({r['error']})" if r.get("error") else ""))
    e = s["energy"]
    lines.append(f"* Pareto front over {', '.join(f'{n} ({d[:3]})' for n, d in objs)} on {split}; "
                 f"trials: {', '.join(f'{k.lower()} {v}' for k, v in s['states'].items())}")
    lines.append(f"energy: {human_energy(e['trials_j'])} spent on trials; pruning {e['pruned']} trials saved "
                 f"{human_energy(e['saved_by_pruning_j'])} ({e['saved_note']})")
    b, c = s.get("baseline"), s.get("chosen")
    if b:
        lines.append(f"baseline (the recipe as it is): {split} {metric} {_f(value_of(b, metric, split))}, test "
                     f"{_f(b['test'].get(metric))}, {human_energy(b['energy_j'])}, {_f(b['time_s'], '.1f')} s")
    if s["target"]:
        name, op, bound = s["target"]
        if c:
            ratio = c.get("ratio_to_baseline")
            r_txt = f"; {', '.join(f'{k} {v:.2f}x the baseline' for k, v in ratio.items())}" if ratio else ""
            lines.append(f"chosen for {name} {op} {bound:g} ({split}), lowest {c['by']}: trial {c['number']}: {split} "
                         f"{name} {_f(value_of(c['measured'], name, split))}, test {_f(c['measured']['test'].get(name))}, "
                         f"{human_energy(c['measured']['energy_j'])}{r_txt}")
            lines.append(f"  {c['command']}")
        else:
            lines.append(f"no finished trial reached {name} {op} {bound:g} on {split}")
    if s.get("picture"):
        lines.append(f"front: {s['picture']}")
    return "\n".join(lines)


def _f(v, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


COST_LABELS = {"energy_j": "energy (J)", "flops": "training FLOPs", "time_s": "time (s)", "params": "parameters",
               "co2e_g": "CO2e (g)"}


def _plain_tick(v: float, cost: str) -> str:
    """A log axis tick as a plain number: 0.4, 2, 30, 1.5k, 2M (no powers of ten)."""
    if v <= 0:
        return ""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:.3g}"


def plot_front(sweep, s: dict) -> Path:
    """Metric against the first cost (log scale): every trial, the front joined, the chosen one ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    split, objs = s["split"], s["objectives"]
    metric = next(n for n, _ in objs if n not in COSTS)
    cost = next((n for n, _ in objs if n in COSTS), "energy_j")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = {r["number"]: (value_of(r["measured"], cost, split), value_of(r["measured"], metric, split), r["state"])
           for r in s["trials"] if r["measured"]}
    for state, style in (("COMPLETE", dict(c="tab:blue", marker="o")), ("PRUNED", dict(c="0.6", marker="x"))):
        xy = [(x, y) for x, y, st in pts.values() if st == state and x is not None and y is not None]
        if xy:
            ax.scatter(*zip(*xy), label=state.lower(), zorder=3, **style)
    fr = sorted((pts[k][0], pts[k][1]) for k in s["front"] if k in pts and pts[k][0] is not None)
    if fr:
        ax.plot(*zip(*fr), c="tab:red", lw=1.2, label="Pareto front", zorder=2)
    if s.get("baseline") and s["baseline"].get(cost):
        ax.scatter([s["baseline"][cost]], [value_of(s["baseline"], metric, split)], c="k", marker="s",
                   label="baseline (recipe as is)", zorder=4)
    if s["target"]:
        ax.axhline(s["target"][2], ls="--", c="0.4", lw=0.8, label=f"target {s['target'][0]} {s['target'][1]} "
                                                                     f"{s['target'][2]:g}")
    c = s.get("chosen")
    if c and c["number"] in pts:
        ax.scatter([pts[c["number"]][0]], [pts[c["number"]][1]], s=260, facecolors="none", edgecolors="tab:green",
                   lw=2, label=f"chosen: trial {c['number']}", zorder=5)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _plain_tick(v, cost)))  # 0.4 J, not 4x10^-1
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel(f"{COST_LABELS.get(cost, cost)} (log scale)")
    ax.set_ylabel(f"{split} {metric}")
    ax.set_title(f"sweep {sweep.path.name}: {len(pts)} trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = sweep.path / "front.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
