"""`powertrain runs [DIR]`: the runs under a folder, newest first, with their state.

A run's state comes from its directory (RunDir.status): complete (eval.json), training (a process holds
its lock now), interrupted (a signal stopped it at a checkpoint) or failed (it ended between
checkpoints: a crash, an error or a kill). Unfinished runs say how to continue.

>>> rows = find_runs("runs")  # doctest: +SKIP
>>> print(format_runs(rows, "runs"))  # doctest: +SKIP
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ..errors import RunDirError
from .rundir import RunDir

MAX_DEPTH = 4  # runs/<group>/<sub>/<run>: deep enough for hand-made layouts, not a crawl of the disk


HEADLINE = ("accuracy", "r2", "elbo_nats", "mse", "bits_per_char", "perplexity", "loss")


def headline_metric(metrics: Optional[dict]) -> Optional[str]:
    """The metric that sums up an evaluation: accuracy for classifiers, R² for regression, the ELBO or MSE
    for reconstruction, else the loss.

    >>> headline_metric({"loss": 0.3, "accuracy": 0.9, "f1_macro": 0.89})
    'accuracy'
    """
    for name in HEADLINE:
        if isinstance((metrics or {}).get(name), (int, float)):
            return name
    return None


def _run_dirs(root: Path, depth: int = 0):
    """Folders under `root` that hold a run (recipe.yaml and env.json); a run's own subfolders are not searched."""
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return
    for p in children:
        if (p / "recipe.yaml").is_file() and (p / "env.json").is_file():
            yield p
        elif depth < MAX_DEPTH:
            yield from _run_dirs(p, depth + 1)


def describe(path: str | Path, root: str | Path = ".") -> dict:
    """One row: run, recipe, kind, state, step, headline metric, energy, started."""
    run = RunDir.open(path)
    row = {"run": str(Path(path).relative_to(root)) if Path(path).is_relative_to(root) else str(path),
           "dir": str(run.path), "recipe": "?", "kind": "?", "state": "?", "step": None, "metric": None,
           "value": None, "energy_j": None, "energy_method": None, "started": run.started, "note": None}
    try:
        row["recipe"] = run.raw_recipe().get("name", "?")
        row["kind"] = run.kind
        st = run.status()
        row["state"], row["step"] = st["state"], st["step"]
        if st["state"] == "training":
            row["note"] = f"process {st['pid']}"
        elif st["state"] in ("interrupted", "failed"):
            row["note"] = f"powertrain resume {run.path}"
        ev = run.read("eval", required=False) or {}
        split = ev.get("test") or ev.get("val") or {}
        name = headline_metric(split)
        if name:
            row["metric"], row["value"] = ("test " if ev.get("test") else "val ") + name, split[name]
        elif st["state"] != "complete":
            last = [r for r in run.metrics() if "val" in r]
            name = headline_metric(last[-1]["val"]) if last else None
            if name:
                row["metric"], row["value"] = f"val {name} (step {last[-1]['step']})", last[-1]["val"][name]
        bill = run.read("bill", required=False)
        if bill:
            from ..measure.bill import energy_share

            row["energy_j"], row["energy_method"] = bill["energy"].get("total_j"), bill["energy"].get("method")
            row["energy_measured"] = (energy_share(bill["energy"]) or {}).get("share")  # of the joules, 0..1
    except (RunDirError, OSError, KeyError, TypeError) as e:
        row["state"], row["note"] = "damaged", str(e)
    return row


def find_runs(root: str | Path = "runs") -> list[dict]:
    """Every run under `root`, newest first."""
    root = Path(root)
    if not root.is_dir():
        raise RunDirError(f"'{root}' is not a folder; pass the folder your runs are in (default: runs)")
    rows = []
    for p in _run_dirs(root):
        try:
            rows.append(describe(p, root))
        except RunDirError as e:
            if "symbolic link" in str(e):  # a run powertrain will not read: listed, with the reason
                rows.append({"run": str(p.relative_to(root)), "dir": str(p), "recipe": "?", "kind": "?",
                             "state": "refused", "step": None, "metric": None, "value": None, "energy_j": None,
                             "energy_method": None, "started": p.lstat().st_mtime, "note": str(e)})
            continue  # else not a powertrain run after all (no 'powertrain' in env.json)
    return sorted(rows, key=lambda r: r["started"], reverse=True)


def _energy(j) -> str:
    if j is None:
        return "-"
    from ..measure.bill import _si

    return _si(j, "J")


def _how(share) -> str:
    """' (est.)' when no joule was measured, ' (99% meas.)' when part was, '' when all were (or unknown)."""
    if share is None or share == 1.0:
        return ""
    return " (est.)" if share == 0 else f" ({min(share, 0.99):.0%} meas.)"


def format_runs(rows: list[dict], root: str | Path = "runs") -> str:
    if not rows:
        return f"no runs under '{root}' (train one: powertrain train digits-mlp)"
    head = ["run", "recipe", "status", "step", "headline metric", "energy", "started"]
    body = []
    for r in rows:
        metric = f"{r['metric']} {r['value']:.4g}" if r["value"] is not None else "-"
        state = r["state"] + (f" ({r['kind']})" if r["kind"] not in ("trained", "?") else "")
        body.append([r["run"], r["recipe"], state, "-" if r["step"] is None else str(r["step"]), metric,
                     _energy(r["energy_j"]) + _how(r.get("energy_measured")),
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(r["started"]))])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    todo = [r for r in rows if r["state"] in ("interrupted", "failed")]
    for r in todo:
        lines.append(f"{r['run']}: {r['state']}; continue with `{r['note']}`")
    for r in rows:
        if r["state"] == "refused":
            lines.append(f"{r['run']}: refused: {r['note']}")
    return "\n".join(lines)
