"""Rung 1: train, resume and evaluate from recipes, writing run directories.

>>> import powertrain
>>> run = powertrain.train("xor", out="/tmp/pt-doctest-xor", callbacks=[])  # doctest: +SKIP
>>> run.metrics["test"]["accuracy"]  # doctest: +SKIP
1.0
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import yaml

from . import data, distributed, models, rundir, visualize
from .bill import carbon_model, make_bill, write_bill
from .engine import Trainer
from .errors import PowertrainError, RunDirError
from .measure import Meter
from .metrics import loss_names
from .hardware import environment, resolve_device
from .recipe import Recipe, load_recipe


@dataclass
class Run:
    dir: Path
    recipe: Recipe
    metrics: dict  # {"test": {...}, "val": {...}} as in eval.json
    trainer: Trainer
    bill: dict  # as in bill.json


def build_trainer(recipe: Recipe, run_dir: Optional[Path], callbacks=None, teacher: bool = True) -> Trainer:
    """Data, model and Trainer for a recipe, seeded so that the same recipe gives the same bits.

    `model.init_from` loads the matching weights of another run (compress/transfer.py); with
    `train.distill` (and `teacher`) the trainer is a `Distiller` of the teacher run (compress/distill.py)."""
    torch.manual_seed(recipe.run.seed)
    bundle = data.build(recipe.data.model_dump(), seed=recipe.run.seed)
    if run_dir is not None and bundle.meta.extra.get("vocab") is not None:
        rundir.keep_vocab(Path(run_dir), bundle.meta.extra["vocab"])
    model = models.build(recipe.model.model_dump(), bundle.meta)
    if recipe.model.init_from:
        from .compress import transfer

        transfer.apply(model, recipe.model, run_dir, announce=distributed.setup(recipe.train.strategy).is_main)
    meter = Meter(carbon=carbon_model(recipe.run))
    if recipe.run.idle_baseline_s:
        meter.measure_idle(recipe.run.idle_baseline_s)
    kwargs = dict(run_dir=run_dir, callbacks=callbacks, seed=recipe.run.seed, meter=meter)
    kd = recipe.train.distill
    if kd is not None and teacher:
        from .compress.distill import Distiller, load_teacher

        net, path = load_teacher(kd.teacher, recipe, bundle.meta)
        trainer = Distiller(model, bundle, recipe.train, teacher=net, alpha=kd.alpha, temperature=kd.temperature,
                            cache=kd.cache, **kwargs)
        trainer.teacher_dir = path
        return trainer
    return Trainer(model, bundle, recipe.train, **kwargs)


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
    from .recipe import parse_recipe

    return parse_recipe(raw)


def _final_weights(trainer: Trainer, recipe: Recipe) -> None:
    es = recipe.train.early_stop
    if es is not None and es.restore_best:
        trainer.restore_best()


def _fit_and_evaluate(trainer: Trainer, recipe: Recipe, run_dir: Path) -> Run:
    """Fit, evaluate, bill. In a job every rank runs this (the collectives need them all); only rank 0
    prints and writes."""
    main = trainer.dist.is_main
    try:
        trainer.fit()
    except KeyboardInterrupt:
        if main:
            print(f"\ninterrupted at step {trainer.step}; checkpoint saved in {trainer.last_checkpoint}\n"
                  f"resume with: powertrain resume {run_dir}", file=sys.stderr, flush=True)
        raise
    _final_weights(trainer, recipe)
    results = {s: trainer.evaluate(s) for s in ("test", "val") if getattr(trainer.data, s) is not None}
    for split_metrics in results.values():  # reconstruction: the loss also as "mse" (AE) or "elbo_nats" (VAE)
        split_metrics.update(loss_names(trainer.model, trainer.task, split_metrics["loss"]))
    figures = visualize.run_figures(trainer, run_dir) if main else []  # reconstructions.png (+ samples.png: VAE)
    if figures:
        results["figures"] = [p.name for p in figures]
    results["stop_reason"] = trainer.stop_reason
    results["step"] = trainer.step
    bill = make_bill(trainer, recipe.run)  # a collective in a job: energy, FLOPs and devices of every rank
    if main and getattr(trainer, "teacher_dir", None):  # a distilled run: the teacher's figures beside the student's
        from .compress.distill import bill_blocks

        bill.update(bill_blocks(trainer, bill, trainer.teacher_dir))
    if main:
        rundir.write_json(run_dir / "eval.json", results)
        write_bill(bill, run_dir)
    return Run(run_dir, recipe, results, trainer, bill)


def _environment(recipe: Recipe) -> dict:
    d = distributed.setup(recipe.train.strategy)
    return {**environment(resolve_device(recipe.train.device)), "strategy": d.strategy, "world_size": d.world_size}


def train(recipe: str | Path | dict | Recipe = "mnist1d-cnn", overrides: Optional[list[str]] = None,
          out: Optional[str | Path] = None, callbacks=None) -> Run:
    """Train a recipe (built-in name, YAML path, dict or Recipe) into a new run directory.

    Under torchrun every process calls this; rank 0 creates and writes the run directory. When
    torchrun restarts a job (`--max-restarts`) whose run directory exists, the job resumes it."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    recipe = with_parent(recipe)
    d = distributed.setup(recipe.train.strategy)
    if distributed.elastic_restart_count() and (out or recipe.run.out):
        path = Path(out or recipe.run.out)
        if distributed.on_main(lambda: (path / "recipe.yaml").is_file()):
            return resume(path, callbacks=callbacks)
    run_dir = distributed.on_main(lambda: rundir.create(recipe, out, _environment(recipe)))
    try:
        trainer = build_trainer(recipe, run_dir if d.is_main else None, callbacks)
    except PowertrainError:  # bad data or model: nothing was trained, so leave no half-made run directory
        distributed.on_main(lambda: shutil.rmtree(run_dir, ignore_errors=True))
        raise
    run = _fit_and_evaluate(trainer, recipe, run_dir)
    distributed.finish_job()
    return run


def resume(run_dir: str | Path, overrides: Optional[list[str]] = None, callbacks=None) -> Run:
    """Continue a run from its newest checkpoint; the result equals an uninterrupted run. Under torchrun,
    with any number of processes (rank 0 reads the run directory)."""
    distributed.init_process_group()  # join torchrun's group, if any, before the recipe picks a strategy
    path, recipe = distributed.on_main(lambda: rundir.open_run(run_dir, overrides))
    _refuse_derived(path)
    if overrides:
        distributed.on_main(lambda: (path / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False)))
    d = distributed.setup(recipe.train.strategy)
    trainer = build_trainer(recipe, path if d.is_main else None, callbacks)
    trainer.resume()
    distributed.on_main(lambda: rundir.truncate_metrics(path, trainer.step))
    run = _fit_and_evaluate(trainer, recipe, path)
    distributed.finish_job()
    return run


def _refuse_derived(path: Path) -> None:
    """A pruned or quantized run is finished: resuming it would train its parent's recipe from scratch."""
    from .compress.derived import read_derived

    derived = read_derived(path)
    if derived is not None:
        raise RunDirError(f"'{path}' is a {derived.get('method')} run derived from {derived.get('parent')}; it cannot be "
                          f"resumed: derive it again from the parent (e.g. `powertrain {derived.get('method')} PARENT ...`)")


def evaluate(run_dir: str | Path, split: str = "test") -> dict:
    """Recompute a split's metrics from the run's saved checkpoint (or its int8 model, for a quantized run)."""
    from .compress.derived import is_quantized_run, load_model

    if is_quantized_run(rundir.open_run(run_dir)[0]):
        trainer = load_model(run_dir)[2]
        metrics = trainer.evaluate(split)
        return {**metrics, **loss_names(trainer.model, trainer.task, metrics["loss"])}
    distributed.init_process_group()
    path, recipe = distributed.on_main(lambda: rundir.open_run(run_dir))
    d = distributed.setup(recipe.train.strategy)
    trainer = build_trainer(recipe, path if d.is_main else None, callbacks=[], teacher=False)
    if not trainer.resume():
        raise RunDirError(f"'{path}' has no checkpoint yet; finish it with `powertrain resume {path}`")
    _final_weights(trainer, recipe)
    metrics = trainer.evaluate(split)
    metrics.update(loss_names(trainer.model, trainer.task, metrics["loss"]))  # as in eval.json: mse, elbo_nats
    return metrics
