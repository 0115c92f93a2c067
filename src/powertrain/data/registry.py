"""The dataset registry: a leaf module, so that each loader registers itself without importing the
package that imports it.

>>> from powertrain.data.registry import DATASETS
>>> "mnist1d" in DATASETS.names()
True
"""
from ..recipe.registry import Registry

DATASETS = Registry("data")
