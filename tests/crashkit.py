"""Child processes of tests/test_crash.py: train or resume one run, killed or signalled at a chosen moment.

`child` is the target of multiprocessing "forkserver" processes (tests/ is on sys.path, so the children import
this module by name). The forkserver preloads PRELOAD (torch, powertrain and what a run imports lazily) but
runs no computation, so each child is a cheap fork that starts training at once (a fresh Python: ~4 s).

A moment is a dict:
  {"kind": "step", "k": k}                         SIGKILL in on_step_end once trainer.step == k
  {"kind": "io", "n": n, "when": "before"|"after"}  SIGKILL at the n-th call (during fit) of os.fsync,
                                                    os.replace or os.rename, before or after the real call
  {"kind": "signal", "sig": SIGINT|SIGTERM, "k": k} os.kill(self, sig) from a forward hook on the model,
                                                    after the training forward of step k: mid-step k
  None                                              no kill (the reference, and the resumes)
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback

import torch

import powertrain
import powertrain.cli
from powertrain import Callback

RECIPE = "digits-mlp"  # dropout: a resume that loses the RNG state gives other bits
OVERRIDES = ["train.epochs=8", "train.eval_every_steps=9", "train.checkpoint_every_steps=6", "train.log_every=4",
             "train.early_stop.metric=accuracy", "train.early_stop.patience=3",
             "train.device=cpu"]  # the same bits are the CPU's promise (with the same thread count: THREADS)
# 21 steps per epoch: epoch ends 21 (no checkpoint), 42 (checkpoint), 63 (evaluation + checkpoint);
# evaluations every 9 steps and checkpoints every 6 coincide at 18, 36, ...; early stopping ends it in epoch 4
THREADS = 1  # every child, the reference included: the same bits need the same thread count
IO_FUNCS = ("fsync", "replace", "rename")
# what the forkserver imports before it forks any child: torch, powertrain and what they import lazily in a
# run (sklearn's digits and split, torchmetrics, torch._dynamo for the first optimizer). Python < 3.13 does
# not give the forkserver the parent's sys.path, so this module may not load there: each child imports it.
PRELOAD = ["torch", "torch._dynamo", "torchmetrics", "sklearn.datasets", "sklearn.model_selection", "safetensors.torch",
           "powertrain", "powertrain.cli", "crashkit"]
IMPORTED_AT = time.time()  # long before a child starts when the forkserver preloaded this module


class Probe:
    """What the child watches: the trainer in fit, its calls of os.fsync/replace/rename, its training forwards."""

    def __init__(self, moment):
        self.moment = moment or {}
        self.trainer = None
        self.in_fit = False
        self.fit_calls = 0
        self.io_log: list = []  # [function, trainer.step] of each call during fit
        self.forwards = 0  # training-mode forwards of the model in the training loop
        self.signal_step = None  # the step during which the signal was sent
        self.hook = None

    def kill_if(self, cond: bool) -> None:
        if cond:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def patch_io(self, run_dir: str) -> None:
        """Log (and kill at) the calls that write `run_dir` only: a first run on a fresh machine also writes
        powertrain's cache (the measured peak), which a later run reads instead; that is no checkpoint write."""
        m = self.moment
        inside = os.path.realpath(run_dir) + os.sep
        for name in IO_FUNCS:
            real = getattr(os, name)

            def wrapped(*args, _real=real, _name=name, **kwargs):
                if not self.in_fit or not (_target(_name, args) or inside).startswith(inside):
                    return _real(*args, **kwargs)
                self.io_log.append([_name, self.trainer.step])
                hit = m.get("kind") == "io" and len(self.io_log) == m["n"]
                self.kill_if(hit and m["when"] == "before")
                out = _real(*args, **kwargs)
                self.kill_if(hit and m["when"] == "after")
                return out

            setattr(os, name, wrapped)

    def patch_fit(self) -> None:
        """Wrap the public `Trainer.fit` (every entry point trains through it, the CLI too): the probe learns
        the trainer, and its callback (appended to the trainer's) hooks the model's forward once the loop
        starts (`on_fit_start`: after the FLOP counting, whose forwards in train mode are not steps)."""
        real_fit = powertrain.Trainer.fit
        probe = self

        def fit(trainer, *args, **kwargs):
            probe.trainer, probe.in_fit = trainer, True
            probe.fit_calls += 1
            trainer.callbacks = [*trainer.callbacks, ProbeCallback(probe)]
            try:
                return real_fit(trainer, *args, **kwargs)
            finally:
                probe.in_fit = False
                if probe.hook is not None:
                    probe.hook.remove()
                    probe.hook = None

        powertrain.Trainer.fit = fit

    def on_forward(self, module, inputs, output) -> None:
        if not module.training:  # evaluations run in eval mode
            return
        self.forwards += 1
        m = self.moment
        if m.get("kind") == "signal" and self.signal_step is None and self.trainer.step + 1 == m["k"]:
            self.signal_step = m["k"]  # the forward of step k: dropout drew its numbers, backward is to come
            os.kill(os.getpid(), m["sig"])


def _target(name: str, args: tuple) -> str:
    """The real path an os.fsync (of a descriptor), os.replace or os.rename call writes; '' if unknown."""
    try:
        if name == "fsync":
            fd = args[0] if isinstance(args[0], int) else args[0].fileno()
            return os.readlink(f"/proc/self/fd/{fd}")
        return os.path.realpath(args[1])
    except (OSError, IndexError, AttributeError, TypeError, ValueError):
        return ""


class ProbeCallback(Callback):
    def __init__(self, probe: Probe):
        self.probe = probe

    def on_fit_start(self, trainer) -> None:
        self.probe.hook = trainer.model.register_forward_hook(self.probe.on_forward)


class KillAfterStep(Callback):
    def __init__(self, probe: Probe, k: int):
        self.probe, self.k = probe, k

    def on_step_end(self, trainer, loss) -> None:
        self.probe.kill_if(trainer.step == self.k)


def child(job: dict) -> None:
    """Run one job: {"mode": "train"|"resume", "entry": "api"|"cli", "run_dir", "overrides", "moment",
    "outcome": json path written at the end (not when killed), "log": stdout+stderr file, and optionally
    "env": variables set first, "idle_cpu": a peak measured now is cached whatever the load}."""
    t0 = time.time()
    with open(job["log"], "w") as log:  # stdout and stderr of the whole child go there
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115  (lives as long as the process)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a plain process, whatever the forkserver set
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(THREADS)
    moment = job.get("moment")
    probe = Probe(moment)
    run_dir = job["run_dir"]
    for key, value in (job.get("env") or {}).items():  # e.g. a fresh POWERTRAIN_CACHE_DIR: a new machine
        os.environ[key] = value
    if job.get("idle_cpu"):  # the peak counts as measured on an idle CPU, so that a fresh cache is written
        from powertrain.measure import peak

        peak.busy_reason = lambda *a, **k: ""
    probe.patch_fit()
    probe.patch_io(run_dir)
    outcome: dict = {"rc": None, "exception": None}
    try:
        if job["entry"] == "cli":
            argv = (["train", RECIPE, *job["overrides"], "--out", run_dir] if job["mode"] == "train"
                    else ["resume", run_dir])
            outcome["rc"] = powertrain.cli.main(argv)
        else:
            callbacks = [KillAfterStep(probe, moment["k"])] if moment and moment["kind"] == "step" else []
            if job["mode"] == "train":
                powertrain.train(RECIPE, job["overrides"], out=run_dir, callbacks=callbacks)
            else:
                powertrain.resume(run_dir, callbacks=callbacks)
    except BaseException as e:  # noqa: BLE001  (KeyboardInterrupt and SystemExit are results here)
        if isinstance(e, SystemExit) and job["entry"] == "cli":
            outcome["rc"] = e.code
        else:
            outcome["exception"] = {"mro": [c.__name__ for c in type(e).__mro__], "text": str(e)[:500],
                                    "traceback": traceback.format_exc()[-3000:]}
    outcome.update(fit_calls=probe.fit_calls, io_log=probe.io_log, forwards=probe.forwards,
                   signal_step=probe.signal_step, steps_per_epoch=getattr(probe.trainer, "steps_per_epoch", None),
                   total_steps=getattr(probe.trainer, "total_steps", None),
                   preloaded_s=round(t0 - IMPORTED_AT, 3), child_s=round(time.time() - t0, 3))
    sys.stdout.flush()
    sys.stderr.flush()
    with open(job["outcome"], "w") as f:
        json.dump(outcome, f)
    rc = outcome["rc"]
    sys.exit(rc if isinstance(rc, int) else (0 if outcome["exception"] is None else 1))
