"""Shrink a trained run: prune it (whole channels or heads, or single weights), quantize it, export it. Each of
prune, prune_channels, prune_heads and quantize reads a run directory and writes a derived one (derived.json names
the parent) with its own eval.json and bill.

>>> from powertrain.shrink import prune, prune_channels, prune_heads, quantize, export
>>> pruned = prune("runs/fashion-convnet", sparsity=0.8, epochs=1)  # doctest: +SKIP
>>> smaller = prune_channels("runs/fashion-convnet", channels=0.5)  # doctest: +SKIP
>>> small = quantize("runs/digits-mlp")                             # doctest: +SKIP
>>> export("runs/digits-mlp", format="onnx")["max_abs_diff"] < 1e-4  # doctest: +SKIP
True
"""
from ..train.load import load_model  # noqa: F401  (any run's model: fp32, pruned or int8)
from .derived import read_derived
from .export import export
from .prune import prune
from .quantize import quantize
from .structured import prune_channels, prune_heads

__all__ = ["export", "load_model", "prune", "prune_channels", "prune_heads", "quantize", "read_derived"]
