"""Compare runs: a table of metric, params, FLOPs, time, energy and CO2e, and a Pareto plot of the
metric against energy and against training FLOPs. Reads run directories only.

>>> pareto_front([(1.0, 0.90), (2.0, 0.95), (3.0, 0.93)])  # (cost, metric): lower cost, higher metric
[0, 1]

Runs on different datasets are not comparable: each dataset (its name, path and test limit) gets its
own front and colour. For metrics where lower is better (loss, mse, mae, ...) the front flips.

A derived run costs its parent's training plus its own: its time, FLOPs, energy and CO2e are the sums
along its line of parents. A pruned or quantized run names its parent in derived.json; a distilled or
fine-tuned one in its recipe's `run.parent` (the teacher, or the `model.init_from` run). On the plot a child
is marked by its method and joined to its parent by an arrow; a third panel puts the metric against
the model's size on disk, where quantization shows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import RunDirError
from ..measure.bill import energy_summary
from ..run.rundir import RunDir


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


COSTS = ("time_s", "train_flops", "energy_j", "co2e_g")  # summed along a derived run's parents


def _read(path: Path, name: str) -> Optional[dict]:
    """One of a run's JSON files, or None when it is missing or damaged (a parent may be gone)."""
    try:
        return RunDir(path).read(name, required=False)
    except RunDirError:
        return None


def _costs(bill: dict) -> dict:
    return {"time_s": bill.get("time_s", {}).get("total"), "train_flops": bill.get("flops", {}).get("train_total"),
            "energy_j": bill.get("energy", {}).get("total_j"), "co2e_g": bill.get("co2e_g")}


def _parent_info(path: Path) -> Optional[dict]:
    """{"parent", "method", "settings"} of a derived run: derived.json (prune, quantize) or the recipe's
    run.parent (distill, fine-tune); None for a run trained from scratch."""
    derived = _read(path, "derived")
    if derived:
        return derived
    try:
        raw = RunDir(path).raw_recipe()
    except (OSError, RunDirError):
        return None
    run, train, model = (raw.get(k) or {} for k in ("run", "train", "model"))
    if not run.get("parent"):
        return None
    kd = train.get("distill")
    method = "distill" if kd else "fine-tune" if model.get("init_from") else "derived"
    return {"parent": run["parent"], "method": method, "settings": kd or {}}


def _method_label(derived: dict) -> str:
    s = derived.get("settings", {})
    if derived.get("method") == "prune" and s.get("structured") in ("channels", "heads"):
        return f"prune {s[s['structured']]:.0%} {s['structured']}"
    if derived.get("method") == "prune" and "sparsity" in s:
        return f"prune {s['sparsity']:.0%}"
    if derived.get("method") == "quantize" and "mode" in s:
        return f"int8 {s['mode']}"
    if derived.get("method") == "distill" and "temperature" in s:
        return f"distill T={s['temperature']:g} a={s.get('alpha', 0.5):g}"
    return str(derived.get("method", "derived"))


def _weights_bytes(path: Path, derived: Optional[dict]) -> Optional[int]:
    """Size on disk of the model's weights: the int8 file of a quantized run, else the newest checkpoint's."""
    try:
        f = RunDir(path).final_weights()
    except RunDirError:
        return None
    f = f / "model.safetensors" if f.is_dir() else f
    return f.stat().st_size if f.is_file() else None


def _lineage_costs(path: Path, derived: dict, own: dict) -> tuple[dict, Optional[str]]:
    """Own costs plus every ancestor's; (own costs, a note) if an ancestor's bill cannot be read."""
    total, seen, info = dict(own), {path.resolve()}, derived
    while info and info.get("parent"):
        parent = Path(info["parent"])
        bill = _read(parent, "bill")
        if parent.resolve() in seen or bill is None:
            return own, f"parent '{parent}' has no readable bill: own cost only"
        seen.add(parent.resolve())
        for k, v in _costs(bill).items():
            total[k] = None if v is None or total[k] is None else total[k] + v
        info = _parent_info(parent)
    return total, None


def load_row(run_dir: str | Path, metric: str = "accuracy", split: str = "test") -> dict:
    """One run's comparable numbers from eval.json and bill.json (and derived.json, for a derived run)."""
    run = RunDir.open(run_dir)
    path, recipe = run.path, run.recipe()
    ev = run.read("eval")  # missing: the run did not finish (a one-line error saying to resume it)
    bill = run.read("bill", required=False) or {}
    value = ev.get(split, {}).get(metric)
    if value is None:
        have = ", ".join(k for k, v in ev.get(split, {}).items() if isinstance(v, float))
        raise RunDirError(f"'{path}': eval.json has no {split} '{metric}'; pass --metric one of: {have}")
    derived = _parent_info(path)
    own = _costs(bill)
    costs, note = _lineage_costs(path, derived, own) if derived else (own, None)
    return {
        "run": path.name, "dir": str(path), "data": _data_key(recipe.data.model_dump()),
        "metric": value, "params": bill.get("params"), **costs,
        "energy_method": bill.get("energy", {}).get("method"),
        "energy_summary": energy_summary(bill.get("energy") or {}, short=True),  # '99% measured (NVML); CPU estimated'
        "size_bytes": _weights_bytes(path, derived),
        "parent": derived.get("parent") if derived else None,
        "method": _method_label(derived) if derived else None,
        "own": own if derived else None, "lineage_note": note,
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
    rows = mark_fronts([load_row(d, metric, split) for d in run_dirs], metric)
    return rows, (plot(rows, metric, split, Path(png)) if png else None)


def mark_fronts(rows: list[dict], metric: str) -> list[dict]:
    """Set row["pareto_<cost>"] for the rows on the front of `metric` against each cost, one front per dataset."""
    higher = metric not in LOWER_IS_BETTER
    for key in ("energy_j", "train_flops", "time_s", "size_bytes"):
        for data_key in dict.fromkeys(r["data"] for r in rows):  # one front per dataset
            idx = [i for i, r in enumerate(rows) if r[key] is not None and r["data"] == data_key]
            for k in pareto_front([(rows[i][key], rows[i]["metric"]) for i in idx], higher):
                rows[idx[k]][f"pareto_{key}"] = True
    return rows


def table(rows: list[dict], metric: str) -> str:
    head = f"{'#':>2} {'run':<34} {metric:>9} {'params':>10} {'train FLOPs':>12} {'time s':>8} {'energy J':>10} {'CO2e g':>8}  pareto  energy method"
    lines = [head]
    for i, r in enumerate(rows):
        mark = "E" if r.get("pareto_energy_j") else " "
        mark += "F" if r.get("pareto_train_flops") else " "
        lines.append(f"{r.get('n', i + 1):>2} {r['run'][:34]:<34} {r['metric']:>9.4f} {_fmt(r['params'], ','):>10} {_fmt(r['train_flops'], '.3g'):>12} "
                     f"{_fmt(r['time_s'], '.3g'):>8} {_fmt(r['energy_j'], '.4g'):>10} {_fmt(r['co2e_g'], '.3g'):>8}  {mark:<6}  "
                     f"{r.get('energy_summary') or r['energy_method'] or '-'}")
    lines.append("pareto: E = on the metric-vs-energy front, F = on the metric-vs-FLOPs front; # = the run's number on the plot")
    children = [r for r in rows if r.get("parent")]
    if children:
        names = {str(Path(r["dir"]).resolve()): r["run"] for r in rows}
        for r in children:
            parent = names.get(str(Path(r["parent"]).resolve()), r["parent"])
            own = r["own"] or {}
            lines.append(f"derived: {r['run']} = {r['method']} of {parent} (own energy {_fmt(own.get('energy_j'), '.4g')} J, "
                         f"own FLOPs {_fmt(own.get('train_flops'), '.3g')})" + (f"; {r['lineage_note']}" if r["lineage_note"] else ""))
        lines.append("note: a derived run's time, FLOPs, energy and CO2e include its parents' training")
    datasets = list(dict.fromkeys(r["data"] for r in rows))
    if len(datasets) > 1:
        lines.append(f"note: these runs use {len(datasets)} datasets ({'; '.join(datasets)}); metrics are comparable "
                     f"only within one, so each has its own Pareto front")
    return "\n".join(lines)


def _short(v: float) -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= factor:
            return f"{v / factor:.3g}{prefix}"
    return f"{v:.3g}"


MARKERS = {"prune": "v", "int8 dynamic": "s", "int8 static": "P", "distill": "^", "fine-tune": ">"}  # others "D"


def _marker(method: Optional[str]) -> str:
    if not method:
        return "o"
    return MARKERS.get(method, MARKERS.get(method.split()[0], "D"))


def _arrows(ax, rows: list[dict], key: str) -> None:
    """An arrow from each parent in `rows` to its child, at (cost, metric)."""
    at = {str(Path(r["dir"]).resolve()): r for r in rows if r[key] is not None}
    for r in rows:
        p = at.get(str(Path(r["parent"]).resolve())) if r.get("parent") and r[key] is not None else None
        if p is not None:
            ax.annotate("", xy=(r[key], r["metric"]), xytext=(p[key], p["metric"]), zorder=1,
                        arrowprops={"arrowstyle": "->", "color": "0.45", "linestyle": "--", "lw": 1})


def _label_boxes(w: float, h: float, x: float, y: float, r: float):
    """Candidate boxes (x0, y0, x1, y1) in display units for a w x h label around the point (x, y), at
    distance r: right, upper right, up, upper left, left, lower left, down, lower right."""
    for dx, dy in ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)):
        cx = x + dx * (r + w / 2) if dx else x
        cy = y + dy * (r + h / 2) if dy else y
        yield (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), (dx, dy)


def _overlap(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def label_points(ax, xs: list[float], ys: list[float], labels: list[str], fontsize: float = 8) -> None:
    """Write each label beside its point where it overlaps the fewest other labels and points: a greedy
    search over 8 directions at growing distances (a leader line joins a label pushed away). Call it after
    the axes' limits and scales are final (it places in display coordinates)."""
    fig = ax.figure
    fig.canvas.draw()  # final layout: transforms are now what the file will show
    px = fig.dpi / 72.0
    pts = ax.transData.transform(list(zip(xs, ys)))
    inside = ax.get_window_extent()
    marker = 5 * px
    obstacles = [(x - marker, y - marker, x + marker, y + marker) for x, y in pts]
    placed: list = []
    order = sorted(range(len(xs)), key=lambda i: (pts[i][0], pts[i][1]))
    for i in order:
        w, h = (0.62 * len(labels[i]) + 0.4) * fontsize * px, 1.25 * fontsize * px
        best = None
        for step, r in enumerate((3 * px, 9 * px, 16 * px, 26 * px)):
            for box, d in _label_boxes(w, h, *pts[i], r):
                cost = sum(_overlap(box, o) for o in placed) * 4 + sum(
                    _overlap(box, o) for j, o in enumerate(obstacles) if j != i)
                out = (max(0, inside.x0 - box[0]) + max(0, box[2] - inside.x1)
                       + max(0, inside.y0 - box[1]) + max(0, box[3] - inside.y1))
                cost += out * h * 2 + step * 0.05 * w * h  # nearer is better when all else is equal
                if best is None or cost < best[0]:
                    best = (cost, box, d, r, step)
            if best[0] < 1e-9:
                break
        _, box, d, r, step = best
        placed.append(box)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        ax.annotate(labels[i], (xs[i], ys[i]), xytext=((cx - pts[i][0]) / px, (cy - pts[i][1]) / px),
                    textcoords="offset points", ha="center", va="center", fontsize=fontsize, zorder=5,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
                    arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6} if step >= 2 else None)


PANELS = {"energy_j": "training energy (J)", "train_flops": "training FLOPs", "time_s": "training time (s)",
          "size_bytes": "model size on disk (bytes)"}


def pareto_figure(rows: list[dict], metric: str, split: str, keys=("energy_j", "train_flops", "size_bytes"),
                  key_text: bool = True, ncols: Optional[int] = None):
    """The Pareto plots (one panel per cost in `keys`) as a matplotlib Figure. Each point carries its row's
    number (1, 2, ...; `row["n"]` if set), placed where it overlaps least; with `key_text` a key below the
    panels names the run behind each number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    numbers = [str(r.get("n", i + 1)) for i, r in enumerate(rows)]
    key_lines = [f"{n}  {r['run']}" + (f"  ({r['method']})" if r.get("method") else "") for n, r in zip(numbers, rows)]
    cols = 1 if len(rows) <= 4 else 2 if len(rows) <= 12 else 3
    key_h = 0.2 * -(-len(rows) // cols) if key_text else 0.0  # inches of key below the panels
    ncols = min(ncols or len(keys), len(keys))
    nrows = -(-len(keys) // ncols)
    height = 4.3 * nrows + 0.45 + (key_h + 0.25 if key_text else 0.0)
    fig, grid = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, height), squeeze=False)
    fig.subplots_adjust(left=0.06 if ncols > 2 else 0.09, right=0.98, top=1 - 0.45 / height,
                        bottom=(key_h + 0.85 if key_text else 0.6) / height, wspace=0.28, hspace=0.35)
    axes = [ax for row in grid for ax in row]
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    methods = sorted({r["method"] for r in rows if r.get("method")})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10
    for ax, key in zip(axes, keys):
        label = PANELS[key]
        pts = [(n, r) for n, r in zip(numbers, rows) if r.get(key) is not None]
        if not pts:
            ax.text(0.5, 0.5, f"no {label} in these runs", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([]), ax.set_yticks([])
            continue
        groups = list(dict.fromkeys(r["data"] for _, r in pts))
        for g, color in zip(groups, colors):
            mine = [r for _, r in pts if r["data"] == g]
            prefix = f"{g}: " if len(groups) > 1 else ""
            for r in mine:
                ax.scatter([r[key]], [r["metric"]], color=color, alpha=0.7, zorder=2, marker=_marker(r.get("method")), s=36)
            front = sorted((r for r in mine if r.get(f"pareto_{key}")), key=lambda r: r[key])
            ax.plot([r[key] for r in front], [r["metric"] for r in front], "-", color=color, zorder=3, lw=1.2,
                    label=f"{prefix}Pareto front")
        _arrows(ax, [r for _, r in pts], key)
        xs = [r[key] for _, r in pts if r[key] > 0]
        if xs and max(xs) > 20 * min(xs):  # a log axis over less than a decade or so has no readable ticks
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # 2x10^-2, 3x10^-2 ... would overlap
        else:  # few short ticks (1.2T, 500k), not an offset that collides with the axis label
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _short(v)))
        ax.margins(x=0.12, y=0.12)
        ax.set_xlabel(label + (" (children: + parents')" if methods and key != "size_bytes" else ""))
        ax.set_ylabel(f"{split} {metric}")
        ax.grid(alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        handles += [Line2D([], [], marker=_marker(m), ls="", color="0.3", label=m) for m in methods]
        if methods:
            handles.append(Line2D([], [], ls="--", color="0.45", label="parent -> derived run"))
        ax.legend(handles=handles, loc="best", fontsize=7)
    for ax, key in zip(axes, keys):
        pts = [(n, r) for n, r in zip(numbers, rows) if r.get(key) is not None]
        if pts:
            label_points(ax, [r[key] for _, r in pts], [r["metric"] for _, r in pts], [n for n, _ in pts])
    energy = sorted({r["energy_method"] for r in rows if r.get("energy_method")})
    fig.suptitle(f"{split} {metric} vs cost" + (f"  (energy: {', '.join(energy)})" if energy else ""), fontsize=10)
    if key_text:
        per = -(-len(key_lines) // cols)
        for c in range(cols):
            fig.text(0.06 + c / cols, (key_h + 0.1) / height, "\n".join(key_lines[c * per:(c + 1) * per]), va="top",
                     ha="left", fontsize=8, family="monospace", transform=fig.transFigure)
    return fig


def plot(rows: list[dict], metric: str, split: str, png: Path) -> Path:
    """The Pareto plots as a PNG (numbered points, and a key naming each run below the panels)."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(rows, metric, split)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png
