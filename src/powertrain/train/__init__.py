"""Training: the Trainer (engine.py with its mixins outcome.py, state.py, precision.py), the one
lifecycle every entry point uses (lifecycle.py: build, fit, finish; load.py: a trained run read back),
strategies for one process, DDP and FSDP (strategy.py, distributed.py, sharded.py), optimizers and
schedules, callbacks, loggers, metrics, signals, and the training variants: distillation, DP-SGD and
init_from (distill.py, privacy.py, transfer.py).

`powertrain.train` is the rung-1 function (api.py), which shadows this package as an attribute of
`powertrain`: import from it by full path, `from powertrain.train.engine import Trainer`.
"""
