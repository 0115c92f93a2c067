"""The bill for a loop powertrain does not run: `Tracker` writes an ordinary run directory (recipe.yaml
describing the run, env.json, metrics.jsonl, eval.json, bill.json) from what any loop can tell it.

    tracker = Tracker(model, out="runs/mine", framework="loop")
    tracker.start()                      # the run directory, the Meter's 'fit' window, a hook on the model
    ... tracker.step(samples=32)         # after each optimizer step
    ... tracker.log(loss=0.3)            # a metrics.jsonl line at this step
    ... tracker.evaluate("test", accuracy=0.97)   # eval.json's split
    tracker.finish()                     # the bill into bill.json, eval.json

FLOPs come from the engine's counter (`measure.FlopCache.train_step`: forward + backward of the model on
a real batch, the optimizer not counted), once per input shape. A forward pre-hook on the model keeps
the inputs of the training forwards of each step (a reference, no copy); `step()` adds the FLOPs of
those shapes, counting a shape the first time it is seen. Eval forwards (model.eval() or no grad) are
not counted as training.

The run's recipe.yaml names `external` data and model: it describes the run for `runs`, `compare`,
`report` and `plan --from`; what would rebuild the model (resume, eval, export) says it cannot.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..data.registry import DATASETS
from ..errors import DataError, ModelError
from ..measure import FlopCache, Meter, forward_flops
from ..measure.bill import BillRecord, carbon_model, make_bill
from ..measure.hardware import environment
from ..models.registry import MODELS
from ..recipe import RunConfig
from ..recipe.registry import Options
from ..run.rundir import RunDir

FRAMEWORKS = {"loop": "a plain PyTorch loop (powertrain.track)", "lightning": "PyTorch Lightning",
              "transformers": "the Hugging Face Trainer", "keras": "Keras 3 (torch backend)"}


class ExternalOptions(Options):
    framework: str = "loop"  # what trained it: loop, lightning, transformers, keras
    class_name: Optional[str] = None  # the model's class (model section)


@DATASETS.register("external", ExternalOptions)
def _external_data(opts: ExternalOptions, seed: int = 0):
    """data of a run trained outside powertrain (track, Lightning, HF Trainer, Keras): described, not rebuilt"""
    raise DataError(f"data 'external': this run was trained by {FRAMEWORKS.get(opts.framework, opts.framework)}, "
                    f"whose data powertrain does not hold; read its bill, compare or report it, or evaluate it there")


@MODELS.register("external", ExternalOptions)
def _external_model(opts: ExternalOptions, meta=None):
    """a model trained outside powertrain (track, Lightning, HF Trainer, Keras): described, not rebuilt"""
    raise ModelError(f"model 'external' ({opts.class_name or '?'}): this run was trained by "
                     f"{FRAMEWORKS.get(opts.framework, opts.framework)}; powertrain cannot rebuild the model: "
                     f"load it with that framework")


class _Described:
    """What RunDir.create and write_recipe need of a recipe: a name and `to_dict()`."""

    def __init__(self, raw: dict):
        self.raw, self.name = raw, raw["name"]

    def to_dict(self) -> dict:
        return self.raw


def _n_samples(x: Any) -> Optional[int]:
    leaves = [t for t in torch.utils._pytree.tree_flatten(x)[0] if isinstance(t, torch.Tensor) and t.dim()]
    return int(leaves[0].shape[0]) if leaves else None


class Tracker:
    """The bill of a loop powertrain does not run (see the module's docstring). `model` is the
    `nn.Module` being trained (a Keras model on the torch backend is one); `out` the run directory (new
    or empty); `region`, `pue`, `price_per_kwh` as in a recipe's `run:` section; `log_every` steps
    between metrics.jsonl lines of `step()`."""

    def __init__(self, model: nn.Module, out: str | Path, *, framework: str = "loop", name: Optional[str] = None,
                 region: str = "world", pue: float = 1.0, price_per_kwh: Optional[float] = None,
                 log_every: int = 50, meter: Optional[Meter] = None, hook: bool = True):
        if not isinstance(model, nn.Module):
            raise ModelError(f"{framework}: the model is a {type(model).__name__}; expected a torch.nn.Module "
                             f"(for Keras, the torch backend: KERAS_BACKEND=torch)")
        self.model, self.out, self.framework = model, Path(out), framework
        self.run_cfg = RunConfig(region=region, pue=pue, price_per_kwh=price_per_kwh)  # checked: one-line errors
        self.meter = meter if meter is not None else Meter(carbon=carbon_model(self.run_cfg))
        self.name = name or f"{framework}-{type(model).__name__}"
        self.log_every, self.use_hook = log_every, hook
        self.flops = FlopCache(model)
        self.step_count, self.samples, self.train_flops, self.eval_samples = 0, 0, 0, 0
        self.batch_size: Optional[int] = None
        self.results: dict = {}
        self.run: Optional[RunDir] = None
        self._inputs: list[tuple] = []  # (args, kwargs) of this step's training forwards
        self._hook = None
        self._t_log, self._samples_log = 0.0, 0
        self._probe: Optional[tuple] = None
        self.flops_per_step: Optional[int] = None
        self._in_eval = False
        self.bill: Optional[dict] = None

    # ------------------------------------------------------------ start
    def _recipe(self) -> dict:
        section = {"name": "external", "framework": self.framework}
        train = {k: v for k, v in (("batch_size", self.batch_size), ("max_steps", self.step_count or None)) if v}
        run = {k: v for k, v in self.run_cfg.model_dump().items() if v != RunConfig().model_dump()[k]}
        return {"name": self.name, "description": f"trained by {FRAMEWORKS.get(self.framework, self.framework)}, "
                                                  f"billed by powertrain", "data": section,
                "model": {**section, "class_name": type(self.model).__name__}, **({"train": train} if train else {}),
                **({"run": run} if run else {})}

    def start(self) -> "Tracker":
        """Make the run directory (locked by this process) and open the 'fit' window."""
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        self.run = RunDir.create(_Described(self._recipe()), self.out, {**environment(device), "framework": self.framework})
        self._metrics = self.run.metrics_log()
        self._metrics.open()
        if self.use_hook:
            self._hook = self.model.register_forward_pre_hook(self._keep_inputs, with_kwargs=True)
        self._t_log = time.perf_counter()
        self.meter.begin("fit")
        return self

    def _keep_inputs(self, module, args, kwargs) -> None:
        if module.training and torch.is_grad_enabled():
            self.saw(args, kwargs)

    def saw(self, args: tuple, kwargs: dict) -> None:
        """The model was called for training with these inputs (the hook calls it; an adapter whose model
        is not called through nn.Module.__call__, Keras, calls it from its own wrapper)."""
        if not self._in_eval:
            self._inputs.append((args, kwargs))

    # ------------------------------------------------------------ the loop
    def step(self, samples: Optional[int] = None, loss: Any = None) -> None:
        """One optimizer step done: `samples` in its batch (default: the batch the model saw), `loss` its
        loss (a float or a 0-d tensor; read at the log cadence only)."""
        inputs = self._inputs
        self._in_eval, was = True, self._in_eval  # the counter's own forward is not a training forward
        try:
            counts = [self.flops.train_step(*args, **kwargs) for args, kwargs in inputs]  # once per shape
        finally:
            self._in_eval, self._inputs = was, []
        for (args, kwargs), n in zip(inputs, counts):
            self.train_flops += n
            if self._probe is None:  # one sample of the first batch: forward FLOPs per sample at the end
                self._probe, self.flops_per_step = torch.utils._pytree.tree_map(_first_sample, (args, kwargs)), n
        if samples is None:
            samples = sum(_n_samples(inp) or 0 for inp in inputs)
        self.batch_size = self.batch_size or samples or None
        self.step_count += 1
        self.samples += int(samples)
        self._samples_log += int(samples)
        if loss is not None and self.step_count % self.log_every == 0:
            now = time.perf_counter()
            self.log(loss=float(loss.detach() if torch.is_tensor(loss) else loss),
                     samples_per_s=self._samples_log / max(now - self._t_log, 1e-9))
            self._samples_log, self._t_log = 0, now

    def log(self, step: Optional[int] = None, **metrics: Any) -> None:
        """A metrics.jsonl line at `step` (default: the steps done): plain numbers, or a `val` dict."""
        record = {"step": self.step_count if step is None else step}
        record.update({k: (float(v) if torch.is_tensor(v) else v) for k, v in metrics.items()})
        self._metrics.write(record)

    def begin_eval(self) -> None:
        """An evaluation inside training starts (billed apart from training compute, as the engine's)."""
        if not self._in_eval:
            self._in_eval = True
            self.meter.begin("eval")

    def end_eval(self) -> None:
        if self._in_eval:
            self._in_eval = False
            self.meter.end("eval")

    def evaluate(self, split: str = "test", **metrics: Any) -> dict:
        """Record the metrics of `split` ('val' or 'test') for eval.json (and a `val` line in metrics.jsonl)."""
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) or torch.is_tensor(v)}
        self.results[split] = {**self.results.get(split, {}), **clean}
        if split == "val" and self.run is not None and self.bill is None:
            self.log(val=clean)
        if self.bill is not None:  # an evaluation after training (trainer.test, trainer.evaluate) joins eval.json
            self.run.write("eval", {**self.run.read("eval", required=False), **self.results})
        return clean

    # ------------------------------------------------------------ the end
    def finish(self, stop_reason: str = "completed") -> dict:
        """Close the windows, write eval.json and bill.json, release the run; returns the bill."""
        if self.run is None or self.bill is not None:
            return self.bill or {}
        self.end_eval()
        if self._hook is not None:
            self._hook.remove()
        self._inputs = []
        self.meter.end("fit", flops=self.train_flops)
        self._metrics.close()
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        params = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        per_sample = None
        if self._probe is not None:  # as the engine counts it: the model in eval mode, one sample
            was = self.model.training
            self.model.eval()
            per_sample = forward_flops(self.model, *self._probe[0], **self._probe[1]).total
            self.model.train(was)
        record = BillRecord(params=params, trainable_params=trainable, flops_per_sample_forward=per_sample,
                            flops_per_step_train=self.flops_per_step, train_flops=self.train_flops,
                            steps=self.step_count, samples_trained=self.samples, device=device,
                            precision=_precision(self.model), phase_s=None,
                            job={"world_size": 1, "framework": self.framework})
        self.bill = make_bill(self.meter, record)
        self.run.write_recipe(_Described(self._recipe()))
        self.run.write("eval", {**self.results, "stop_reason": stop_reason, "step": self.step_count})
        self.run.write("bill", self.bill)
        self.run.unlock()
        return self.bill

    def abort(self) -> None:
        """Training failed: close what is open, keep what was written, write no bill."""
        if self._hook is not None:
            self._hook.remove()
        if self.run is not None and self.bill is None:
            self._metrics.close()
            self.run.unlock()


def _first_sample(x: Any) -> Any:
    return x[:1] if isinstance(x, torch.Tensor) and x.dim() else x


def _precision(model: nn.Module) -> str:
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


__all__ = ["Tracker", "FRAMEWORKS"]
