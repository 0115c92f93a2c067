"""Rung 1, the facade: train a recipe, resume a run, evaluate it, load its model. Each is the one
lifecycle of train/ (build, fit, finish), which every command and stage uses too.

>>> import powertrain
>>> run = powertrain.train("xor", out="/tmp/pt-doctest-xor", callbacks=[])  # doctest: +SKIP
>>> run.metrics["test"]["accuracy"]  # doctest: +SKIP
1.0
>>> model, recipe, trainer = powertrain.load("/tmp/pt-doctest-xor")  # doctest: +SKIP
"""
from .train.lifecycle import Run, check_resume_overrides, resume, train
from .train.load import evaluate, load_model as load, load_trainer

__all__ = ["Run", "check_resume_overrides", "evaluate", "load", "load_trainer", "resume", "train"]
