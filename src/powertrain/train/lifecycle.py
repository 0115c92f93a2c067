"""The one lifecycle every entry point uses: build (recipe -> data, model, Trainer), fit, finish
(eval.json, bill.json, the printed bill). train, resume, distill and transfer are `train` or
`resume` with a recipe; prune and quantize (shrink/derived.py), eval, export and generate build with
`build_trainer` and read the run's final weights from its RunDir (load.py).

>>> import powertrain
>>> run = powertrain.train("xor", out="/tmp/pt-doctest-xor", callbacks=[])  # doctest: +SKIP
>>> run.metrics["test"]["accuracy"]  # doctest: +SKIP
1.0
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .. import data, models
from ..errors import RecipeError, RunDirError
from ..measure import Meter
from ..measure.bill import carbon_model
from ..measure.hardware import environment, resolve_device, use_threads
from ..settings import recorded_threads
from ..recipe import Recipe, load_recipe, parse_recipe
from ..run.rundir import RunDir
from . import distributed, figures
from .engine import Trainer
from .signals import Interrupted


@dataclass
class Run:
    dir: Path
    recipe: Recipe
    metrics: dict  # {"test": {...}, "val": {...}} as in eval.json
    trainer: Trainer
    bill: dict  # as in bill.json


def build_trainer(recipe: Recipe, run: Optional[RunDir], callbacks=None, *, teacher: bool = True,
                  cls: type = Trainer, writes: bool = True) -> Trainer:
    """Data, model and Trainer for a recipe, seeded so that the same recipe gives the same bits.

    `run`: the run directory (its vocabulary is checked; the Trainer writes there when `writes`);
    `model.init_from` loads the matching weights of another run (transfer.py); with `train.distill`
    (and `teacher`) the trainer is a `Distiller` of the teacher run (distill.py); else a `cls`."""
    torch.manual_seed(recipe.run.seed)
    bundle = data.build(recipe.data.model_dump(), seed=recipe.run.seed)
    main = distributed.setup(recipe.train.strategy).is_main
    if run is not None and main and bundle.meta.vocab is not None:
        run.keep_vocab(bundle.meta.vocab)
    model = models.build(recipe.model.model_dump(), bundle.meta, batch_size=recipe.train.batch_size,
                         device=recipe.train.device)  # refused before allocation when training would not fit
    if recipe.model.init_from:
        from . import transfer

        transfer.apply(model, recipe.model, run.path if run is not None else None, announce=main and writes)
    meter = Meter(carbon=carbon_model(recipe.run))
    if recipe.run.idle_baseline_s:
        meter.measure_idle(recipe.run.idle_baseline_s)
    if run is not None and writes and main and (recipe.run.tensorboard or recipe.run.mlflow or recipe.run.wandb):
        from . import loggers  # TensorBoard / MLflow / W&B: a missing package fails here, before anything trains
        from .callbacks import Progress

        extra = loggers.for_recipe(recipe.run)
        if recipe.run.wandb:
            from .wandb_logger import WandbLogger

            extra.append(WandbLogger())
        callbacks = [*([Progress()] if callbacks is None else callbacks), *extra]
    kwargs = dict(run_dir=run if run is not None and writes else None, callbacks=callbacks,
                  seed=recipe.run.seed, meter=meter)
    if recipe.train.privacy is not None:  # DP-SGD (privacy.py): a PrivateTrainer, as train.distill picks a Distiller
        from .privacy import PrivateTrainer, private_model

        if cls is Trainer:
            cls = PrivateTrainer
        else:  # e.g. pruning a private run: the same layers as it trained (Opacus's replacements)
            model = private_model(model)[0]
    kd = recipe.train.distill
    if kd is not None and teacher:
        from .distill import Distiller, load_teacher

        net, path = load_teacher(kd.teacher, recipe, bundle.meta)
        trainer = Distiller(model, bundle, recipe.train, teacher=net, alpha=kd.alpha, temperature=kd.temperature,
                            cache=kd.cache, **kwargs)
        trainer.teacher_dir = path  # its bill and eval feed this run's bill
        return trainer
    return cls(model, bundle, recipe.train, **kwargs)


def with_parent(recipe: Recipe) -> Recipe:
    """The recipe with `model.init_from` and `train.distill.teacher` as absolute paths (a run directory
    must work from any folder) and `run.parent` set to the run it derives from, unless already set:
    the init_from run (where its weights come from), else the teacher."""
    init, kd = recipe.model.init_from, recipe.train.distill
    if not init and kd is None:
        return recipe
    raw = recipe.to_dict()
    if init:
        raw["model"]["init_from"] = init = str(Path(init).expanduser().resolve())
    if kd is not None:
        raw["train"]["distill"]["teacher"] = str(Path(kd.teacher).expanduser().resolve())
    raw["run"]["parent"] = raw["run"].get("parent") or init or raw["train"]["distill"]["teacher"]
    return parse_recipe(raw)


def _fit(trainer: Trainer, recipe: Recipe, run: RunDir) -> Run:
    """Fit and finish (the Trainer writes eval.json and bill.json); pictures for reconstruction runs.
    In a job every rank runs this (the collectives need them all); only rank 0 prints and writes."""
    main = trainer.dist.is_main
    try:
        trainer.fit()
    except Interrupted as e:
        if main:
            e.tell(run.path)
        raise
    except KeyboardInterrupt:  # a second Ctrl-C, or raised by a callback: the step was abandoned
        if main:
            print(f"\ninterrupted inside step {trainer.step + 1}; the last checkpoint is {trainer.last_checkpoint}\n"
                  f"resume with: powertrain resume {run.path}", file=sys.stderr, flush=True)
        raise
    results = trainer.results
    drawn = figures.run_figures(trainer, run.path) if main else []  # reconstructions.png (+ samples.png: VAE)
    if drawn:
        results["figures"] = [p.name for p in drawn]
        run.write("eval", results)
    if main:
        from . import loggers

        loggers.finish(trainer)  # TensorBoard/MLflow get the bill now (Trainer.finish runs after on_fit_end)
    distributed.finish_job()
    return Run(run.path, recipe, results, trainer, trainer.final_bill)


def _environment(recipe: Recipe) -> dict:
    d = distributed.setup(recipe.train.strategy)
    threads = use_threads(recipe.train.threads)
    return {**environment(resolve_device(recipe.train.device), threads), "strategy": d.strategy, "world_size": d.world_size}


def train(recipe: str | Path | dict | Recipe = "mnist1d-cnn", overrides: Optional[list[str]] = None,
          out: Optional[str | Path] = None, callbacks=None) -> Run:
    """Train a recipe (built-in name, YAML path, dict or Recipe) into a new run directory.

    Under torchrun every process calls this; rank 0 creates and writes the run directory. When
    torchrun restarts a job (`--max-restarts`) whose run directory exists, the job resumes it."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    recipe = with_parent(recipe)
    distributed.setup(recipe.train.strategy)  # under torchrun: join the group, so that rank 0 alone creates the run
    out = out or recipe.run.out
    if distributed.elastic_restart_count() and out:
        if distributed.on_main(lambda: RunDir(out).recipe_file.is_file()):
            return resume(out, callbacks=callbacks)
    made: dict = {}

    def create() -> str:
        made["run"] = RunDir.create(recipe, out, _environment(recipe))  # holds the lock
        return str(made["run"].path)

    path = distributed.on_main(create)
    run = made.get("run") or RunDir(path)
    try:
        trainer = build_trainer(recipe, run, callbacks)
    except BaseException:  # bad data or model: nothing was trained, so leave no half-made run directory
        distributed.on_main(run.remove)
        raise
    try:
        return _fit(trainer, recipe, run)
    finally:
        run.unlock()


# keys a resume may change: they extend or watch training, or say where and how it runs (not what it
# computes); train.lr is applied to the restored optimizer
RESUMABLE = ("train.epochs", "train.max_steps", "train.eval_every_steps", "train.eval_every_epochs",
             "train.checkpoint_every_steps", "train.keep_checkpoints", "train.early_stop", "train.log_every",
             "train.lr", "train.threads", "train.strategy", "train.activation_checkpointing", "train.compile", "train.device",
             "train.eval_batch_size", "run.region", "run.pue", "run.price_per_kwh", "run.idle_baseline_s")


def _changed(old, new, prefix="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new))
                for k in _changed(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if old != new else []


def check_resume_overrides(old: Recipe, new: Recipe) -> list[str]:
    """The keys a resume's overrides change; a RecipeError names the first that a resume cannot take."""
    changed = _changed(old.to_dict(), new.to_dict())
    for key in changed:
        if not any(key == k or key.startswith(k + ".") for k in RESUMABLE):
            what = {"model": "the model", "data": "the data", "train": "how the run trains"}.get(key.split(".")[0], key)
            raise RecipeError(f"resume: '{key}' changes {what}, which a resumed run must keep (it may change only "
                              f"{', '.join(RESUMABLE)}); train a new run with `powertrain train` instead")
    return changed


def resume(run_dir: str | Path, overrides: Optional[list[str]] = None, callbacks=None) -> Run:
    """Continue a run from its newest checkpoint; the result equals an uninterrupted run. Overrides
    may extend training (epochs, max_steps, cadences, early stopping) or change train.lr; they are
    validated before anything is written. Under torchrun, with any number of processes."""
    distributed.init_process_group()  # join torchrun's group, if any, before the recipe picks a strategy

    def open_checked():
        run = RunDir.open(run_dir)
        if run.kind in ("pruned", "quantized"):
            derived = run.read("derived")
            raise RunDirError(f"'{run.path}' is a {run.kind} run derived from {derived.get('parent')}; it cannot be "
                              f"resumed: derive it again from the parent (e.g. `powertrain {derived.get('method')} "
                              f"PARENT ...`)")
        old = run.recipe()
        new = run.recipe(overrides)
        return str(run.path), old, new, check_resume_overrides(old, new)

    path, old, recipe, changed = distributed.on_main(open_checked)
    run = RunDir(path)
    d = distributed.setup(recipe.train.strategy)
    if d.is_main:
        run.lock()
    try:
        return _resume(run, old, recipe, changed, callbacks)
    finally:
        run.unlock()


def _resume(run: RunDir, old: Recipe, recipe: Recipe, changed: list[str], callbacks) -> Run:
    d = distributed.setup(recipe.train.strategy)
    use_threads(recipe.train.threads, keep=recorded_threads(run.read("env", False) or {}))  # same count, same bits
    trainer = build_trainer(recipe, run, callbacks)
    trainer.resume()
    if d.is_main:
        run.truncate_metrics(trainer.step, getattr(trainer, "metrics_bytes", None))
    if changed and d.is_main:
        run.write_recipe(recipe)
        run.append_metrics({"step": trainer.step, "resume_overrides": {k: v for k, v in _flat(recipe, changed)}})
    if "train.lr" in changed:
        trainer.apply_lr(recipe.train.lr, old.train.lr)
        if d.is_main:
            print(f"train.lr: {old.train.lr:g} -> {recipe.train.lr:g}, applied to the restored optimizer", file=sys.stderr)
    return _fit(trainer, recipe, run)


def _flat(recipe: Recipe, keys: list[str]):
    raw = recipe.to_dict()
    for key in keys:
        v = raw
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        yield key, v
