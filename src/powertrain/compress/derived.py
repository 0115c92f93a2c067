"""Derived runs: a run directory made from another run (pruned, quantized), with its own bill.

    PARENT/                      a run of `powertrain train`
    CHILD/  recipe.yaml          the parent's recipe (with the fine-tuning settings, if any) and
                                 run.parent: PARENT
            env.json             versions, device, threads of this derivation
            derived.json         {"parent": PARENT, "method": "prune" | "quantize", "settings": {...},
                                  "report": {...}}
            eval.json, bill.json the derived model's metrics, and the bill of the derivation alone
            checkpoints/         a pruned model: step-N/ as any run;
                                 a quantized one: quantized.safetensors (int8, read by `load_model`)

Helpers shared by prune, quantize and export: load a run's final weights, make a Trainer of any class
for a recipe, create the child directory, evaluate and bill it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .. import checkpoint, data, models, rundir
from ..bill import carbon_model, make_bill, write_bill
from ..engine import Trainer
from ..errors import RunDirError
from ..hardware import environment, resolve_device
from ..measure import Meter
from ..metrics import loss_names
from ..recipe import Recipe, parse_recipe

DERIVED = "derived.json"
QUANTIZED = "quantized.safetensors"  # under checkpoints/


def make_trainer(recipe: Recipe, run_dir: Optional[Path], cls: type = Trainer, callbacks=None) -> Trainer:
    """Data, model and a `cls` Trainer for a recipe, seeded as `api.build_trainer` does (which cannot take
    a Trainer subclass). `run_dir` None: the trainer writes nothing; `callbacks` None: a progress display."""
    torch.manual_seed(recipe.run.seed)
    bundle = data.build(recipe.data.model_dump(), seed=recipe.run.seed)
    model = models.build(recipe.model.model_dump(), bundle.meta)
    meter = Meter(carbon=carbon_model(recipe.run))
    if recipe.run.idle_baseline_s:
        meter.measure_idle(recipe.run.idle_baseline_s)
    return cls(model, bundle, recipe.train, run_dir=run_dir, callbacks=callbacks, seed=recipe.run.seed, meter=meter)


def read_derived(path: Path) -> Optional[dict]:
    """derived.json of a run directory, or None for a run trained from scratch."""
    f = Path(path) / DERIVED
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        raise RunDirError(f"'{f}' is not valid JSON; the file was damaged") from None


def load_final_weights(path: Path, recipe: Recipe, model: nn.Module, device) -> None:
    """The weights the run reported its metrics with: the best ones under early stopping with
    restore_best, else the newest checkpoint's."""
    es = recipe.train.early_stop
    best = path / "checkpoints" / "best.safetensors"
    if es is not None and es.restore_best and best.is_file():
        from safetensors.torch import load_model as load_st

        load_st(model, str(best), device=str(device))
        return
    if checkpoint.load_latest(path / "checkpoints", model, device) is None:
        raise RunDirError(f"'{path}' has no checkpoint yet; finish it with `powertrain resume {path}`")


def open_trained(run_dir: str | Path, what: str, overrides: Optional[list[str]] = None) -> tuple[Path, Recipe]:
    """A run directory and its recipe, refusing a quantized run (its weights are int8, not the recipe's)."""
    path, recipe = rundir.open_run(run_dir, overrides)
    info = read_derived(path)
    if info and info.get("method") == "quantize":
        raise RunDirError(f"'{path}' is a quantized (int8) run; {what} its parent '{info.get('parent')}' instead")
    return path, recipe


def child_recipe(recipe: Recipe, parent: Path) -> Recipe:
    """The parent's recipe for a derived run: `run.parent` set to the parent, and what made the parent's
    own weights dropped (model.init_from, train.distill, train.backbone_lr_mult): the child starts
    from the parent's final weights instead."""
    raw = recipe.to_dict()
    for key in ("init_from", "init_exclude"):
        raw["model"].pop(key, None)
    raw["train"].update({"distill": None, "backbone_lr_mult": None})
    raw["run"]["parent"] = str(parent.resolve())
    return parse_recipe(raw)


def create_child(parent: Path, recipe: Recipe, out: Optional[str | Path], default_name: str, method: str,
                 settings: dict) -> Path:
    """Make the derived run directory (next to the parent by default) with recipe.yaml, env.json and
    derived.json."""
    path = Path(out) if out else parent.parent / f"{parent.name}-{default_name}"
    if path.exists() and any(path.iterdir()):
        raise RunDirError(f"--out '{path}' already exists and is not empty; pass a new folder with --out")
    path = rundir.create(recipe, path, environment(resolve_device(recipe.train.device)))
    rundir.write_json(path / DERIVED, {"parent": str(parent.resolve()), "method": method, "settings": settings})
    return path


def update_derived(path: Path, **fields) -> None:
    rundir.write_json(path / DERIVED, {**(read_derived(path) or {}), **fields})


def floats(metrics: dict) -> dict:
    """The scalar metrics of an evaluation (no confusion matrix)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def parent_metrics(parent: Path) -> dict:
    """{"test": {...}, "val": {...}} of the parent's eval.json, scalars only ({} if it has none)."""
    try:
        ev = json.loads((parent / "eval.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {s: floats(ev[s]) for s in ("test", "val") if isinstance(ev.get(s), dict)}


def evaluate_splits(trainer: Trainer) -> dict:
    """Final metrics of test and val (what eval.json holds), in the meter's 'final_eval' window."""
    results = {s: trainer.evaluate(s) for s in ("test", "val") if getattr(trainer.data, s) is not None}
    for split_metrics in results.values():
        split_metrics.update(loss_names(trainer.model, trainer.task, split_metrics["loss"]))
    return results


def finish_child(path: Path, trainer: Trainer, recipe: Recipe, results: dict, method: str,
                 params: Optional[int] = None) -> dict:
    """Write eval.json and bill.json of a derived run; the bill says that it covers the derivation only."""
    parent = (read_derived(path) or {}).get("parent")
    results = {**results, "stop_reason": trainer.stop_reason or "completed", "step": trainer.step}
    rundir.write_json(path / "eval.json", results)
    bill = make_bill(trainer, recipe.run)
    if params is not None:  # a quantized model's int8 weights are not nn.Parameters: count them as the parent's
        bill["params"], bill["trainable_params"] = params, 0
    if bill["mfu"]["value"] is None and not bill["mfu"].get("note"):
        bill["mfu"]["note"] = "no training in this run: MFU not computed"
    note = (f"derived run ({method} of {parent}): this bill covers the {method} "
            f"({'fine-tuning and ' if trainer.step else ''}evaluation) only; the parent's training is billed in "
            f"the parent's bill.json, and `powertrain compare` adds the two")
    bill["energy"].setdefault("notes", []).append(note)
    bill["derived"] = {"parent": parent, "method": method}
    write_bill(bill, path)
    return bill


def is_quantized_run(path: Path) -> bool:
    info = read_derived(path)
    return bool(info and info.get("method") == "quantize")


def load_model(run_dir: str | Path) -> tuple[nn.Module, Recipe, Trainer]:
    """Any run's final model, in eval mode: fp32 (trained or pruned) on the run's device, or int8 (quantized) on the CPU.
    Returns (model, recipe, trainer), the trainer holding the run's data.

    >>> model, recipe, trainer = load_model("runs/digits-mlp-int8")  # doctest: +SKIP
    """
    path, recipe = rundir.open_run(run_dir)
    if is_quantized_run(path):
        from .quantize import load_quantized

        return load_quantized(path, recipe)
    trainer = make_trainer(recipe, None, callbacks=[])
    load_final_weights(path, recipe, trainer.model, trainer.device)
    return trainer.model.eval(), recipe, trainer
