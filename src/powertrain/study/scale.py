"""The runs of `powertrain scale` (one per size and budget), the points they give, fit.json and fit.png.
The law and its fit are in scalelaw.py."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import yaml

from ..run.atomic import write_json
from ..errors import RecipeError
from .plan import human_energy, human_time
from ..run.records import read_json
from .scalelaw import SIZE_KEYS, analyse, law_loss
from .space import override
from ..recipe.strict import load_yaml


def parse_sizes(text: str) -> list:
    """'32,48,64' -> [32, 48, 64]; '[[16],[32]]' (YAML) -> [[16], [32]]."""
    try:
        sizes = load_yaml(text if text.strip().startswith("[[") else f"[{text}]", f"--sizes {text}")
    except yaml.YAMLError:
        sizes = None
    if not isinstance(sizes, list) or len(sizes) < 3:
        raise RecipeError(f"--sizes {text}: expected at least 3 sizes, e.g. 32,48,64,96 (or [[16],[32],[64]] for lists)")
    return sizes


def parse_budgets(text: str) -> list[float]:
    try:
        budgets = sorted(float(x) for x in text.split(","))
    except ValueError:
        budgets = []
    if len(budgets) < 2 or any(b <= 0 for b in budgets):
        raise RecipeError(f"--budgets {text}: expected at least 2 training FLOP budgets, e.g. 2e12,6e12")
    return budgets


def _shape(base: dict, key: str, size, say) -> dict:
    """Parameters, training FLOPs per step and tokens per sample of one size, from a built Trainer."""
    from ..train import lifecycle
    from ..recipe import load_recipe

    try:
        recipe = load_recipe(base, [override(key, size)])
    except RecipeError as e:
        raise RecipeError(f"--sizes: {key}={json.dumps(size)} is not a valid value ({e}); list sizes of the key's own "
                          f"form, e.g. --sizes '[[8,16],[16,32],[32,64]]' for a list") from None
    trainer = lifecycle.build_trainer(recipe, None, callbacks=[], writes=False)
    rec = trainer.bill_record()
    meta = trainer.data.meta
    per_sample = meta.input_shape[0] if meta.task == "language_model" else 1
    if not rec.flops_per_step_train:
        raise RecipeError(f"scale: {key}={size}: no training FLOPs were counted for this model")
    return {"recipe": recipe, "params": rec.params, "step_flops": rec.flops_per_step_train,
            "tokens_per_step": recipe.train.batch_size * per_sample, "tokens_per_sample": per_sample}


def train_family(recipe: str, sizes: list, budgets: list[float], size_key: Optional[str] = None,
                 out: Optional[str | Path] = None, overrides=(), say=print) -> tuple[Path, str, list[dict]]:
    """One run per (size, budget) under OUT/runs; finished runs are kept, interrupted ones resumed."""
    from ..train import lifecycle
    from ..recipe import read_raw, apply_overrides, load_recipe

    base = apply_overrides(read_raw(recipe), list(overrides))
    first = load_recipe(base)
    key = size_key or SIZE_KEYS.get(first.model.name)
    if key is None:
        raise RecipeError(f"scale: model '{first.model.name}' has no default size key; pass --size-key, e.g. model.hidden")
    out = Path(out or Path("scaling") / first.name)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "scale.json", {"recipe": recipe, "overrides": list(overrides), "size_key": key, "sizes": sizes,
                                    "budgets": budgets})
    points = []
    for size in sizes:
        shape = _shape(base, key, size, say)
        for c in budgets:
            steps = max(1, round(c / shape["step_flops"]))
            label = f"{c:.0e}" if float(f"{c:.0e}") == c else f"{c:.6g}"  # 1.5e12 is not 2e+12
            run = out / "runs" / f"n{json.dumps(size).replace(' ', '')}-c{label}"
            warm = min(shape["recipe"].train.warmup_steps or 0, steps // 10)
            ovr = [override(key, size), f"train.max_steps={steps}", f"train.eval_every_steps={steps}",
                   f"train.warmup_steps={warm}", f"train.checkpoint_every_steps={max(1, steps // 4)}"]
            if (run / "recipe.yaml").is_file() and (load_recipe(str(run / "recipe.yaml")).to_dict()
                                                    != load_recipe(base, ovr).to_dict()):
                raise RecipeError(f"scale: {run} was trained from another recipe than this command asks for "
                                  f"(other overrides or recipe); pass another --out")
            if not (run / "eval.json").is_file():
                say(f"{key}={json.dumps(size)}: {shape['params']:,} parameters, budget {c:.2g} FLOPs = {steps} steps "
                    f"({steps * shape['tokens_per_step']:.3g} tokens) -> {run}")
                if (run / "recipe.yaml").is_file():
                    lifecycle.resume(run, callbacks=[])
                else:
                    lifecycle.train(base, ovr, out=run, callbacks=[])
            points.append(_point(run, shape["tokens_per_sample"], size))
    return out, key, points


def _point(run: Path, tokens_per_sample: int, size) -> dict:
    ev, bill = read_json(run / "eval.json"), read_json(run / "bill.json")
    split = "val" if ev.get("val") else "test"
    return {"run": str(run), "size": size, "params": bill["params"], "tokens": bill["samples_trained"] * tokens_per_sample,
            "flops": bill["flops"]["train_total"], "loss": ev[split]["loss"], "split": split,
            "energy_j": bill["energy"]["total_j"], "energy_method": bill["energy"]["method"],
            "fit_s": bill["time_s"]["fit"], "mfu": bill["mfu"]["value"], "device": bill["device"]["name"]}


def calibration(points: list[dict]) -> dict:
    """J per FLOP and MFU over all the runs (FLOP-weighted), for plan --from-fit."""
    flops = sum(p["flops"] for p in points)
    mfus = [(p["mfu"], p["flops"]) for p in points if p["mfu"]]
    return {"j_per_flop": sum(p["energy_j"] or 0 for p in points) / flops,
            "mfu": sum(m * f for m, f in mfus) / sum(f for _, f in mfus) if mfus else None,
            "energy_method": points[0]["energy_method"], "device": points[0]["device"], "runs": len(points),
            "seconds": sum(p["fit_s"] or 0 for p in points)}


def scale(recipe: str, sizes: list, budgets: list[float], size_key=None, out=None, overrides=(), say=print,
          draws: int = 100) -> dict:
    out, key, points = train_family(recipe, sizes, budgets, size_key, out, overrides, say)
    fit = analyse(points, calibration(points), draws=draws)
    fit["recipe"], fit["size_key"] = recipe, key
    write_json(out / "fit.json", fit)
    fit["picture"] = str(plot_fit(fit, out / "fit.png"))
    fit["path"] = str(out / "fit.json")
    return fit


def format_fit(fit: dict) -> str:
    c, unc, bt = fit["constants"], fit["interval_90"], fit["backtest"]
    lines = [f"fit: {fit['form']} on {len(fit['points'])} runs (loss on {fit['points'][0]['split']})"]
    for name in ("E", "A", "B", "alpha", "beta"):
        iv = unc.get(name)
        lines.append(f"  {name:6} {c[name]:10.4g}   90% interval {'-' if not iv else f'{iv[0]:.4g} .. {iv[1]:.4g}'}")
    if c["E"] < 0.01:
        lines.append("  note: E sits at the floor of the search (e^-5): these runs do not pin down the irreducible loss, "
                     "so predictions far beyond them are unreliable")
    lines.append(f"  k = {fit['k_flops_per_param_token']:.3g} training FLOPs per parameter per token (measured)")
    lines.append(f"back-test: fit without the largest size ({bt['held_out_params']:,.0f} parameters), predict it:")
    for p in bt["points"]:
        lines.append(f"  D {p['tokens']:.3g}: measured {p['measured']:.4f}, predicted {p['predicted']:.4f}, "
                     f"error {p['error']:+.1%}")
    cal = fit["calibration"]
    lines.append(f"calibration: {cal['j_per_flop']:.3g} J/FLOP ({cal['energy_method']}), MFU "
                 f"{'-' if cal['mfu'] is None else format(cal['mfu'], '.1%')} on {cal['device']}; "
                 f"{cal['runs']} runs, {human_time(cal['seconds'])} of training, "
                 f"{human_energy(sum(p['energy_j'] or 0 for p in fit['points']))}")
    if fit.get("picture"):
        lines.append(f"picture: {fit['picture']}; use it: powertrain plan --from-fit {fit.get('path', 'FIT.json')} "
                     f"--flops 1e15 --device cpu")
    return "\n".join(lines)


def plot_fit(fit: dict, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = sorted({p["params"] for p in fit["points"]})
    held = fit["backtest"]["held_out_params"]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))
    ds = [p["tokens"] for p in fit["points"]]
    grid = np.geomspace(min(ds) / 1.5, max(ds) * 1.5, 100)
    for n, col in zip(sizes, colors):
        pts = sorted((p["tokens"], p["loss"]) for p in fit["points"] if p["params"] == n)
        ax.scatter(*zip(*pts), color=col, zorder=3, marker="D" if n == held else "o",
                   label=f"N = {n:,.0f}" + (" (held out)" if n == held else ""))
        ax.plot(grid, law_loss(fit["constants"], n, grid), color=col, lw=1)
        if n == held:
            ax.plot(grid, law_loss(fit["backtest"]["fit_without"], n, grid), color=col, lw=1.2, ls="--",
                    label="prediction without it")
    ax.set_xscale("log")
    ax.set_xlabel("tokens trained D (log scale)")
    ax.set_ylabel(f"{fit['points'][0]['split']} loss")
    ax.set_title(f"L = E + A/N^a + B/D^b: E={fit['constants']['E']:.3g}, a={fit['constants']['alpha']:.2f}, "
                 f"b={fit['constants']['beta']:.2f}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png
