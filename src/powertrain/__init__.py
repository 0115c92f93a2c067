"""powertrain: train neural networks and get a measured bill for every run.

>>> import powertrain
>>> recipe = powertrain.load_recipe("digits-mlp", ["train.epochs=1"])
>>> recipe.model.name
'mlp'

`powertrain.train` is the function (rung 1); the package of the engine is powertrain/train/, reached
as `from powertrain.train.engine import Trainer` (docs/architecture.md).

The names below load on first use (PEP 562), so that `import powertrain` and the `powertrain` command
start without torch: the command chooses CPU threads before torch's OpenMP pool starts (settings.py).
"""
from importlib import import_module

from .settings import VERSION as __version__
from . import train as _engine_package  # noqa: F401  loaded first, so that the `train` function below keeps the name

del globals()["train"]  # the package's attribute; `powertrain.train` is the function, bound on first use by __getattr__

_WHERE = {  # public name -> the module that defines it
    "Run": ".api", "evaluate": ".api", "load": ".api", "resume": ".api", "train": ".api",
    "DataBundle": ".data", "track": ".integrations", "Meter": ".measure",
    "BillRecord": ".measure.bill", "make_bill": ".measure.bill",
    "Recipe": ".recipe", "TrainConfig": ".recipe", "load_recipe": ".recipe",
    "RunDir": ".run.rundir", "Callback": ".train.callbacks", "Trainer": ".train.engine",
    "Interrupted": ".train.signals",
}
__all__ = sorted(_WHERE) + ["__version__"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'powertrain' has no attribute {name!r}")
    import_module(".api", __name__)  # the whole library, as an eager import had it (registries filled, and so on)
    value = getattr(import_module(_WHERE[name], __name__), name)
    globals()[name] = value  # bound once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
