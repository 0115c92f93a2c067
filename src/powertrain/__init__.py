"""powertrain: train neural networks and get a measured bill for every run.

>>> import powertrain
>>> recipe = powertrain.load_recipe("digits-mlp", ["train.epochs=1"])
>>> recipe.model.name
'mlp'
"""
__version__ = "0.1.0"

from .api import Run, evaluate, resume, train  # noqa: E402
from .bill import BillRecord, make_bill  # noqa: E402
from .callbacks import Callback  # noqa: E402
from .data import DataBundle  # noqa: E402
from .engine import Trainer  # noqa: E402
from .measure import Meter  # noqa: E402
from .recipe import Recipe, TrainConfig, load_recipe  # noqa: E402
from .rundir import RunDir  # noqa: E402
from .signals import Interrupted  # noqa: E402

__all__ = ["BillRecord", "Callback", "DataBundle", "Interrupted", "Meter", "Recipe", "Run", "RunDir", "TrainConfig",
           "Trainer", "evaluate", "load_recipe", "make_bill", "resume", "train", "__version__"]
