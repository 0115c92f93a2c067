"""powertrain: train neural networks and get a measured bill for every run.

>>> import powertrain
>>> recipe = powertrain.load_recipe("digits-mlp", ["train.epochs=1"])
>>> recipe.model.name
'mlp'

`powertrain.train` is the function (rung 1); the package of the engine is powertrain/train/, reached
as `from powertrain.train.engine import Trainer` (docs/architecture.md).
"""
from .settings import VERSION as __version__
from .api import Run, evaluate, load, resume, train
from .data import DataBundle
from .integrations import track
from .measure import Meter
from .measure.bill import BillRecord, make_bill
from .recipe import Recipe, TrainConfig, load_recipe
from .run.rundir import RunDir
from .train.callbacks import Callback
from .train.engine import Trainer
from .train.signals import Interrupted

__all__ = ["BillRecord", "Callback", "DataBundle", "Interrupted", "Meter", "Recipe", "Run", "RunDir", "TrainConfig",
           "Trainer", "evaluate", "load", "load_recipe", "make_bill", "resume", "track", "train",
           "__version__"]
