"""Compare runs: a table of metric, params, FLOPs, time, energy and CO2e, and a Pareto plot of the
metric against energy and against training FLOPs. Reads run directories only.

>>> pareto_front([(1.0, 0.90), (2.0, 0.95), (3.0, 0.93)])  # (cost, metric): lower cost, higher metric
[0, 1]

Runs on different datasets are not comparable: each dataset (its name, path and test limit) gets its
own front and colour. For metrics where lower is better (loss, mse, mae, ...) the front flips.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .errors import RunDirError
from .rundir import open_run


LOWER_IS_BETTER = ("loss", "mse", "mae", "elbo_nll", "nll", "perplexity", "bits_per_char")


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of points that no other point beats on both cost (lower) and metric (better)."""
    if not higher_is_better:
        points = [(c, -m) for c, m in points]
    front = []
    for i, (c, m) in enumerate(points):
        dominated = any((c2 <= c and m2 >= m) and (c2 < c or m2 > m) for j, (c2, m2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def load_row(run_dir: str | Path, metric: str = "accuracy", split: str = "test") -> dict:
    """One run's comparable numbers from eval.json and bill.json."""
    path, recipe = open_run(run_dir)
    try:
        ev = json.loads((path / "eval.json").read_text())
    except FileNotFoundError:
        raise RunDirError(f"'{path}' has no eval.json: the run did not finish; `powertrain resume {path}`") from None
    bill = json.loads((path / "bill.json").read_text()) if (path / "bill.json").exists() else {}
    value = ev.get(split, {}).get(metric)
    if value is None:
        have = ", ".join(k for k, v in ev.get(split, {}).items() if isinstance(v, float))
        raise RunDirError(f"'{path}': eval.json has no {split} '{metric}'; pass --metric one of: {have}")
    energy = bill.get("energy", {})
    return {
        "run": path.name, "dir": str(path), "data": _data_key(recipe.data.model_dump()),
        "metric": value, "params": bill.get("params"), "train_flops": bill.get("flops", {}).get("train_total"),
        "time_s": bill.get("time_s", {}).get("total"), "energy_j": energy.get("total_j"),
        "energy_method": energy.get("method"), "co2e_g": bill.get("co2e_g"),
    }


def _data_key(section: dict) -> str:
    """What fixes a run's test set: the dataset name, and its path and test limit if set."""
    extra = [f"{k}={section[k]}" for k in ("path", "test_limit") if section.get(k) is not None]
    return " ".join([section["name"], *extra])


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def compare(run_dirs: list[str | Path], metric: str = "accuracy", split: str = "test",
            png: Optional[str | Path] = None) -> tuple[list[dict], Optional[Path]]:
    """Rows for each run (printed by the CLI) and, with `png`, the Pareto plot written there."""
    rows = [load_row(d, metric, split) for d in run_dirs]
    higher = metric not in LOWER_IS_BETTER
    for key in ("energy_j", "train_flops"):
        for data_key in dict.fromkeys(r["data"] for r in rows):  # one front per dataset
            idx = [i for i, r in enumerate(rows) if r[key] is not None and r["data"] == data_key]
            for k in pareto_front([(rows[i][key], rows[i]["metric"]) for i in idx], higher):
                rows[idx[k]][f"pareto_{key}"] = True
    return rows, (plot(rows, metric, split, Path(png)) if png else None)


def table(rows: list[dict], metric: str) -> str:
    head = f"{'run':<34} {metric:>9} {'params':>10} {'train FLOPs':>12} {'time s':>8} {'energy J':>10} {'CO2e g':>8}  pareto  energy method"
    lines = [head]
    for r in rows:
        mark = "E" if r.get("pareto_energy_j") else " "
        mark += "F" if r.get("pareto_train_flops") else " "
        lines.append(f"{r['run'][:34]:<34} {r['metric']:>9.4f} {_fmt(r['params'], ','):>10} {_fmt(r['train_flops'], '.3g'):>12} "
                     f"{_fmt(r['time_s'], '.1f'):>8} {_fmt(r['energy_j'], '.4g'):>10} {_fmt(r['co2e_g'], '.3g'):>8}  {mark:<6}  "
                     f"{r['energy_method'] or '-'}")
    lines.append("pareto: E = on the metric-vs-energy front, F = on the metric-vs-FLOPs front")
    datasets = list(dict.fromkeys(r["data"] for r in rows))
    if len(datasets) > 1:
        lines.append(f"note: these runs use {len(datasets)} datasets ({'; '.join(datasets)}); metrics are comparable "
                     f"only within one, so each has its own Pareto front")
    return "\n".join(lines)


def plot(rows: list[dict], metric: str, split: str, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], "energy_j", "training energy (J)"), (axes[1], "train_flops", "training FLOPs")):
        pts = [r for r in rows if r[key] is not None]
        if not pts:
            ax.text(0.5, 0.5, f"no {label} in these runs' bills", ha="center", va="center", transform=ax.transAxes)
            continue
        groups = list(dict.fromkeys(r["data"] for r in pts))
        for g, color in zip(groups, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10):
            mine = [r for r in pts if r["data"] == g]
            prefix = f"{g}: " if len(groups) > 1 else ""
            ax.scatter([r[key] for r in mine], [r["metric"] for r in mine], color=color, alpha=0.45, zorder=2)
            front = sorted((r for r in mine if r.get(f"pareto_{key}")), key=lambda r: r[key])
            ax.plot([r[key] for r in front], [r["metric"] for r in front], "-o", color=color, zorder=3,
                    label=f"{prefix}Pareto front")
        for r in pts:
            ax.annotate(r["run"], (r[key], r["metric"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{split} {metric}")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    methods = sorted({r["energy_method"] for r in rows if r["energy_method"]})
    fig.suptitle(f"{split} {metric} vs cost" + (f"  (energy: {', '.join(methods)})" if methods else ""), fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png
