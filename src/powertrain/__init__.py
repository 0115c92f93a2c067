"""powertrain: train neural networks and get a measured bill for every run.

>>> import powertrain
>>> recipe = powertrain.load_recipe("digits-mlp", ["train.epochs=1"])
>>> recipe.model.name
'mlp'
"""
__version__ = "0.1.0"

from .api import Run, evaluate, resume, train  # noqa: E402
from .callbacks import Callback  # noqa: E402
from .data import DataBundle  # noqa: E402
from .engine import Trainer  # noqa: E402
from .recipe import Recipe, TrainConfig, load_recipe  # noqa: E402

__all__ = ["Callback", "DataBundle", "Recipe", "Run", "TrainConfig", "Trainer", "evaluate", "load_recipe",
           "resume", "train", "__version__"]
