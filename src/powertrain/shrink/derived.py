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

from pathlib import Path
from typing import Optional

from torch import nn

from ..errors import RunDirError
from ..measure.hardware import environment, resolve_device
from ..recipe import Recipe, parse_recipe
from ..run import checkpoint
from ..run.rundir import RunDir
from ..train.engine import Trainer
from ..train.lifecycle import build_trainer
from ..train.metrics import loss_names


def make_trainer(recipe: Recipe, run: Optional[RunDir], cls: type = Trainer, callbacks=None) -> Trainer:
    """Data, model and a `cls` Trainer for a recipe (train.lifecycle.build_trainer); `run` None: it writes nothing."""
    return build_trainer(recipe, run, callbacks, cls=cls, teacher=False)


def read_derived(path: Path) -> Optional[dict]:
    """derived.json of a run directory, or None for a run trained from scratch."""
    return RunDir(path).read("derived", required=False)


def load_final_weights(path: Path, model: nn.Module, device, name: Optional[str] = None) -> dict:
    """The weights the run reported its metrics with (RunDir.final_weights), or the checkpoint `name`
    (e.g. 'step-00000040'), into `model`; returns what derived.json records of them: {"weights", "step"}.
    A run still training is refused, naming its newest whole checkpoint."""
    run = RunDir.open(path)
    weights = run.final_weights(name)
    checkpoint.load_weights(model, weights, device)
    return run.weights_label(weights)


def open_trained(run_dir: str | Path, what: str, overrides: Optional[list[str]] = None) -> tuple[Path, Recipe]:
    """A run directory and its recipe, refusing a quantized run (its weights are int8, not the recipe's)."""
    run = RunDir.open(run_dir)
    if run.kind == "quantized":
        raise RunDirError(f"'{run.path}' is a quantized (int8) run; {what} its parent '{run.parent()}' instead")
    return run.path, run.recipe(overrides)


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
                 settings: dict) -> RunDir:
    """Make the derived run directory (next to the parent by default) with recipe.yaml, env.json and
    derived.json; this process holds its lock."""
    path = Path(out) if out else parent.parent / f"{parent.name}-{default_name}"
    if path.exists() and path.is_dir() and any(path.iterdir()):
        raise RunDirError(f"--out '{path}' already exists and is not empty; pass a new folder with --out")
    return RunDir.create(recipe, path, environment(resolve_device(recipe.train.device)),
                         derived={"parent": str(parent.resolve()), "method": method, "settings": settings})


def update_derived(run: RunDir, **fields) -> None:
    run.write("derived", {**(run.read("derived", required=False) or {}), **fields})


def floats(metrics: dict) -> dict:
    """The scalar metrics of an evaluation (no confusion matrix)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def parent_metrics(parent: Path) -> dict:
    """{"test": {...}, "val": {...}} of the parent's eval.json, scalars only ({} if it has none)."""
    try:
        ev = RunDir(parent).read("eval", required=False) or {}
    except RunDirError:
        return {}
    return {s: floats(ev[s]) for s in ("test", "val") if isinstance(ev.get(s), dict)}


def evaluate_splits(trainer: Trainer) -> dict:
    """Final metrics of test and val (what eval.json holds), in the meter's 'final_eval' window."""
    results = {s: trainer.evaluate(s) for s in ("test", "val") if getattr(trainer.data, s) is not None}
    for split_metrics in results.values():
        split_metrics.update(loss_names(trainer.model, trainer.task, split_metrics["loss"]))
    return results


def finish_child(run: RunDir, trainer: Trainer, results: dict, method: str, params: Optional[int] = None) -> dict:
    """Write eval.json and bill.json of a derived run; the bill says that it covers the derivation only."""
    parent = (run.read("derived", required=False) or {}).get("parent")
    results = {**results, "stop_reason": trainer.stop_reason or "completed", "step": trainer.step}
    run.write("eval", results)
    bill = trainer.bill()
    if params is not None:  # a quantized model's int8 weights are not nn.Parameters: count them as the parent's
        bill["params"], bill["trainable_params"] = params, 0
    note = (f"derived run ({method} of {parent}): this bill covers the {method} "
            f"({'fine-tuning and ' if trainer.step else ''}evaluation) only; the parent's training is billed in "
            f"the parent's bill.json, and `powertrain compare` adds the two")
    bill["energy"].setdefault("notes", []).append(note)
    bill["derived"] = {"parent": parent, "method": method}
    run.write("bill", bill)
    return bill
