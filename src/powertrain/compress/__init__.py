"""Shrink a trained run: prune it, quantize it, export it. Each of prune and quantize reads a run
directory and writes a derived one (derived.json names the parent) with its own eval.json and bill.

>>> from powertrain.compress import prune, quantize, export
>>> pruned = prune("runs/fashion-convnet", sparsity=0.8, epochs=1)  # doctest: +SKIP
>>> small = quantize("runs/digits-mlp")                             # doctest: +SKIP
>>> export("runs/digits-mlp", format="onnx")["max_abs_diff"] < 1e-4  # doctest: +SKIP
True
"""
from .derived import load_model, read_derived
from .export import export
from .prune import prune
from .quantize import quantize

__all__ = ["export", "load_model", "prune", "quantize", "read_derived"]
