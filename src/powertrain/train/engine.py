"""The training engine: `Trainer(model, data, config).fit()` for any `nn.Module`.

>>> import torch
>>> from powertrain import Trainer, TrainConfig
>>> from powertrain.data import DataBundle
>>> x = torch.randn(256, 8); y = (x[:, 0] > 0).long()
>>> data = DataBundle.from_tensors((x, y), val=(x, y))
>>> t = Trainer(torch.nn.Linear(8, 2), data, TrainConfig(epochs=20, lr=0.05), callbacks=[]).fit()
>>> t.evaluate("val")["accuracy"] > 0.9
True

Extension points: override `compute_loss(batch, outputs)` (distillation, VAE's ELBO) or
`train_step(batch)`, or pass `Callback`s. Data order, splits and model init follow the seed, so the
same seed on CPU gives the same bits, and a resumed run equals an uninterrupted one.

With a `run_dir` the Trainer writes metrics.jsonl and checkpoints as it trains, and eval.json and
bill.json when fit ends (`finish`); `bill()` gives the bill of any Trainer. Single, DDP and FSDP are
a strategy object (strategy.py): the loop below is the same for all three.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import strategy as strategies
from .callbacks import Callback, Progress
from ..data import DataBundle
from ..data.augment import augment_batch
from ..errors import NonFiniteLoss, RecipeError
from .precision import AutoPrecision
from ..measure.hardware import resolve_device, use_tf32, use_threads
from ..measure import Meter
from ..models.check import check_fit
from .optim import build_optimizer, build_scheduler, freeze, param_groups
from ..recipe import TrainConfig
from ..run.rundir import MetricsLog, RunDir
from .signals import Deferred, Interrupted
from .outcome import Outcome
from .state import TrainState


class Trainer(Outcome, TrainState, AutoPrecision):
    def __init__(self, model: nn.Module, data: DataBundle | Any, config: Optional[TrainConfig] = None, *,
                 run_dir: Optional[str | Path | RunDir] = None, callbacks: Optional[Iterable[Callback]] = None,
                 seed: int = 0, meter: Optional[Meter | bool] = None):
        """`data`: a DataBundle, a DataLoader, a torch or Hugging Face Dataset, or (x, y) arrays.
        `run_dir` receives metrics.jsonl, checkpoints, eval.json and bill.json (None: keep nothing on
        disk); `callbacks` defaults to a progress display; `meter` measures time, FLOPs and energy
        (default: a `Meter` over the counters this machine has; False: no measurement)."""
        self.cfg = cfg = config or TrainConfig()
        self.seed = seed
        self.strategy = strategies.make(cfg.strategy)
        self.dist = self.strategy.dist
        self.device = resolve_device(cfg.device)
        self.threads = use_threads(cfg.threads)  # once per process: the command chose before torch loaded
        self._init_precision(cfg.precision)  # 'auto' on a CPU: a probe at the start of fit (precision.py)
        self.tf32 = use_tf32(self.device, self.precision)
        self.data = DataBundle.coerce(data).to(self.device)  # DataLoaders, Datasets, arrays too (data/sources.py)
        self.cfg = cfg = self.data.fit_config(cfg)  # a user's DataLoader brings its batch size
        meta = self.data.meta
        self.task, self.num_classes, self._augment = meta.task, meta.num_classes, meta.augment
        self.model = model.to(self.device)
        if cfg.freeze:  # before wrapping and FLOP counting: frozen weights get no gradient
            freeze(self.model, cfg.freeze)
        self._model_loss = getattr(model, "compute_loss", None)  # looked up once, not per step
        self._check_fit()
        self.steps_per_epoch = math.ceil(len(self.data.train) / cfg.batch_size)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self._count_step_flops()  # model FLOPs: before recomputation and sharding change what runs
        if cfg.activation_checkpointing:
            from .distributed import checkpoint_activations

            checkpoint_activations(self.model)
        self.forward_model = self.strategy.wrap(self.model, cfg.compile, self.device, self.precision, seed)
        fused = self.device.type == "cuda" and self.dist.strategy != "fsdp"  # one kernel per update on a GPU
        self.optimizer = build_optimizer(param_groups(self.model, cfg), cfg, fused=fused)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" and self.device.type == "cuda" else None
        shared = self.strategy.share_path(Path(run_dir) if run_dir is not None else None)
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(shared) if shared is not None else None
        self.callbacks = ([Progress()] if self.dist.is_main else []) if callbacks is None else list(callbacks)
        self.step = 0  # optimizer steps done; epoch and position within it derive from it
        self.stop_reason: Optional[str] = None
        self.best: Optional[dict] = None  # {"step", "value"} of the best monitored evaluation
        self._bad_evals = 0
        self._loss_sum, self._loss_n, self._t_log, self._samples_log = 0.0, 0, time.perf_counter(), 0
        self._step_losses: list[torch.Tensor] = []  # on the device, read at the log cadence (no sync per step)
        self.last_checkpoint: Optional[Path] = None
        self._stopped_epochs: list = []  # epoch windows stopped, not yet accounted (see _epoch_window)
        self._epoch_start_step: Optional[int] = None
        self._epoch_carry: Optional[dict] = None  # an epoch window cut by a signal: {"start", time_s, flops, energy_j}
        self._pending_lines: list[dict] = []  # epoch lines accounted, written at the next evaluation or the end
        self._signals = Deferred()
        self.meter = Meter() if meter is None or meter is True else (meter or None)
        if self.meter and not self.dist.reads_node_counters:
            from ..measure.job import drop_node_counters

            drop_node_counters(self.meter)  # local rank 0 reads the node's counters for all
        self.phase_s = {"data": 0.0, "forward_backward": 0.0, "optimizer": 0.0}  # CPU: exact; CUDA: launch time
        self.eval_samples = {"eval": 0, "final_eval": 0}  # samples evaluated inside fit / after it
        self._in_fit = False
        self._metrics = MetricsLog(None)
        self.results: Optional[dict] = None  # eval.json and bill.json's content, once `finish` ran
        self.final_bill: Optional[dict] = None
        self.finish_after_fit = True  # a pruning trainer evaluates after removing its masks instead
        self._owns_lock = False

    @property
    def run_dir(self) -> Optional[Path]:
        return self.run.path if self.run is not None else None

    def _check_fit(self) -> None:
        """Data and model errors fail here, naming sizes and layers, not deep inside a step."""
        from .metrics import TaskMetrics, metric_names

        check_fit(self.model, self.data)
        TaskMetrics(self.task, self.num_classes)  # loads torchmetrics (1-3 s) now, not in fit: fit is billed
        es = self.cfg.early_stop
        if es is not None:
            names = metric_names(self.task)
            if es.metric not in names:
                raise RecipeError(f"train.early_stop.metric: '{es.metric}' is not a validation metric of task "
                                  f"'{self.task}'; expected one of {', '.join(sorted(names))}")

    # ------------------------------------------------------------ the step
    def forward(self, batch: tuple) -> torch.Tensor:  # evaluation runs eager: no second (eval-mode) compile
        return (self.forward_model if self.model.training else getattr(self.forward_model, "_orig_mod", self.forward_model))(batch[0])

    def compute_loss(self, batch: tuple, outputs) -> torch.Tensor:
        """Mean loss of a batch: the model's own `compute_loss(batch, outputs)` if it has one
        (e.g. a VAE's ELBO), else the default for the dataset's task."""
        own = self._model_loss
        if own is not None:
            return own(batch, outputs)
        y = batch[-1]
        if self.task == "multiclass":
            return F.cross_entropy(outputs, y)
        if self.task == "binary":
            return F.binary_cross_entropy_with_logits(outputs.reshape(-1), y.reshape(-1).float())
        if self.task == "regression":
            return F.mse_loss(outputs.reshape(y.shape), y)
        if self.task == "reconstruction":
            return F.mse_loss(outputs, batch[0])
        if self.task == "language_model":
            return F.cross_entropy(outputs.flatten(0, 1), y.flatten())
        raise ValueError(f"no default loss for task '{self.task}': override Trainer.compute_loss")

    def train_step(self, batch: tuple) -> torch.Tensor:
        """One optimizer update over `batch` (split into `accumulate` micro-batches); returns the loss."""
        self.optimizer.zero_grad(set_to_none=True)
        n, acc = len(batch[0]), self.cfg.accumulate
        t0 = time.perf_counter()
        if acc == 1:  # the common case: nothing a plain loop would not do
            with self._autocast():
                loss = self.compute_loss(batch, self.forward(batch))
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total = loss.detach()
        else:
            total = 0.0
            for chunk in zip(*(t.tensor_split(acc) for t in batch)):
                with self._autocast():
                    loss = self.compute_loss(chunk, self.forward(chunk)) * (len(chunk[0]) / n)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
                total = total + loss.detach()
        t1 = time.perf_counter()
        if self.cfg.grad_clip:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.phase_s["forward_backward"] += t1 - t0
        self.phase_s["optimizer"] += time.perf_counter() - t1
        return total

    # ------------------------------------------------------------ the loop
    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The permutation of the train split for `epoch`: a function of (seed, epoch) only."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.data.train), generator=g)

    def fit(self) -> "Trainer":
        """Train until `total_steps` or early stopping, then `finish` (with a run_dir). SIGINT/SIGTERM
        finish the current step, checkpoint and raise `Interrupted`."""
        self._t_log = time.perf_counter()
        self._fit_start_step = self.step
        self._next_due = self._due_after(self.step)
        self._compiling = self.cfg.compile  # in each fit (a resumed run compiles again)
        if self.meter:
            self.meter.begin("fit")
        self._in_fit = True
        self._metrics = self._open_run() if self.run is not None and self.dist.is_main else MetricsLog(None)
        self._metrics.open()  # kept open during fit: a line costs a write, not an open
        self._probe_precision()  # a new run with 'auto' on a CPU: fp32 or bf16, measured (inside the fit window)
        for cb in self.callbacks:
            cb.on_fit_start(self)
        try:
            with self._signals:
                while self.stop_reason is None and self.step < self.total_steps:
                    self._train_epoch()
            self._end_fit()
            if self.stop_reason == "interrupted":
                raise Interrupted(self._signals.received, self.step, self.last_checkpoint)
            self.stop_reason = self.stop_reason or "completed"
            if self.run is not None and self.finish_after_fit:
                self.finish()
        finally:
            self._end_fit()
            if self._owns_lock:
                self.run.unlock()
        return self

    def _end_fit(self) -> None:
        """Close the windows and files of fit (once; also when an exception ends it)."""
        if not self._in_fit:
            return
        self._in_fit = False
        self._epoch_window(begin=False)  # an epoch cut short by an exception
        self._write_epoch_lines()
        if self.meter:
            self.meter.end("fit", flops=self.train_flops(self._fit_start_step, self.step))
        self._metrics.close()
        for cb in self.callbacks:
            cb.on_fit_end(self)

    def _train_epoch(self) -> None:
        epoch, start = divmod(self.step, self.steps_per_epoch)
        self._epoch_window(begin=True)
        t_data = time.perf_counter()
        for batch in self.strategy.batches(self.data.train, self.epoch_order(epoch), self.cfg.batch_size, start):
            if self._augment is not None:  # train batches only; draws from the checkpointed RNG
                batch = (augment_batch(batch[0], self._augment), *batch[1:])
            self.phase_s["data"] += time.perf_counter() - t_data
            if self._compiling:  # the first step under torch.compile compiles: billed as its own window
                loss = self._compile_step(batch)
            else:
                loss = self.strategy.step(self.train_step, batch)
            self.step += 1
            self._after_step(loss, len(batch[0]))
            if self._boundary():
                return
            t_data = time.perf_counter()

    def _compile_step(self, batch: tuple) -> torch.Tensor:
        self._compiling = False
        if self.meter:
            self.meter.begin("compile")
        try:
            return self.strategy.step(self.train_step, batch)
        finally:
            if self.meter:
                self.meter.end("compile")

    def _boundary(self) -> bool:
        """Everything due after optimizer step `self.step`, in one fixed order: close the epoch window,
        evaluate (early stopping decides here), decide to stop, checkpoint. The checkpoint comes last, so
        a run resumed from it has nothing of this step left to do. Returns True to stop."""
        if self.step < self._next_due and self._signals.received is None:
            return False  # the common case: one comparison
        self._flush_losses()  # a non-finite loss stops the run here, before evaluating or checkpointing
        cfg, s, spe = self.cfg, self.step, self.steps_per_epoch
        self._next_due = self._due_after(s)
        epoch_end, last = s % spe == 0, s >= self.total_steps
        if cfg.eval_every_steps:
            due_eval = s % cfg.eval_every_steps == 0 or last
        else:
            due_eval = (epoch_end and (s // spe) % cfg.eval_every_epochs == 0) or last
        if epoch_end:
            self._epoch_window(begin=False)
        if due_eval:
            self._evaluate_val()
        if last and self.stop_reason is None:
            self.stop_reason = "completed"
        if self.stop_reason is None and self._interrupt_requested():
            self.stop_reason = "interrupted"
        stop = self.stop_reason is not None
        if stop:
            self._epoch_window(begin=False)
        if due_eval or stop or (cfg.checkpoint_every_steps and s % cfg.checkpoint_every_steps == 0):
            self.save_checkpoint()
        return stop

    def _due_after(self, s: int) -> int:
        """The next step after `s` at which something may be due: an epoch end, an evaluation, a
        checkpoint, the last step; in a job also the log cadence (where the ranks agree on signals)."""
        every = [self.steps_per_epoch, self.cfg.eval_every_steps, self.cfg.checkpoint_every_steps,
                 self.cfg.log_every if self.dist.enabled else None]
        return min([self.total_steps, *((s // n + 1) * n for n in every if n)])

    def _interrupt_requested(self) -> bool:
        """A signal arrived. In a job the ranks agree at the log cadence (a collective), so that all stop
        at the same step."""
        if not self.dist.enabled:
            return self._signals.received is not None
        if self.step % self.cfg.log_every:
            return False
        return self.strategy.reduce([1.0 if self._signals.received else 0.0], self.device)[0] > 0

    def _epoch_window(self, begin: bool) -> None:
        """Meter window around one epoch's training steps. Closing it only reads the clock and the
        counters (`Meter.stop`); `_account_epochs` turns it into the Window and its metrics.jsonl line
        at the next evaluation, checkpoint or the end of fit, off the hot loop."""
        if not self.meter:
            return
        if begin:
            self.meter.begin("epoch")
            self._epoch_start_step = self.step
        elif self._epoch_start_step is not None:
            self._stopped_epochs.append((self.meter.stop("epoch"), self._epoch_start_step, self.step))
            self._epoch_start_step = None

    def _account_epochs(self) -> None:
        """Each stopped epoch window -> the Meter's totals, and its line {"step", "epoch", "window": "epoch",
        time_s, flops, energy_j, ...} ("partial": started or stopped mid-epoch) to `_pending_lines`, which
        the next evaluation or the end of fit writes (a checkpoint carries them, so that a resumed run
        writes them at the same place). An epoch cut by a signal is carried whole to the resumed run."""
        stopped, self._stopped_epochs = self._stopped_epochs, []
        for s, start, end in stopped:
            w = self.meter.account(s, flops=self.train_flops(start, end))
            flops, energy_j = self.strategy.reduce([w.flops or 0, w.energy_j or 0.0], self.device)  # the job's
            part = {"time_s": w.time_s, "flops": int(flops), "energy_j": energy_j}
            if self._epoch_carry:  # the part of this epoch before a signal stopped the run
                carry, self._epoch_carry = self._epoch_carry, None
                start, part = carry["start"], {k: part[k] + carry[k] for k in part}
            if self.stop_reason == "interrupted" and end % self.steps_per_epoch:
                self._epoch_carry = {"start": start, **part}
                continue
            self._pending_lines.append({"step": end, "epoch": max(end - 1, 0) // self.steps_per_epoch + 1,
                                        "window": "epoch", **part, "energy_method": w.energy_method,
                                        "partial": start % self.steps_per_epoch != 0 or end % self.steps_per_epoch != 0})

    def _write_epoch_lines(self) -> None:
        if self.meter:
            self._account_epochs()
        lines, self._pending_lines = self._pending_lines, []
        for line in lines:
            self.log(line)

    def _after_step(self, loss: torch.Tensor, samples: int) -> None:
        """Bookkeeping of a step, with no host-device sync: the loss stays on the device until the log
        cadence or the next step boundary (`_flush_losses`). Callbacks get it as a 0-d tensor."""
        self._step_losses.append(loss)
        self._samples_log += samples
        for cb in self.callbacks:
            cb.on_step_end(self, loss)
        if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
            self._flush_losses()
            now = time.perf_counter()
            if self.dist.enabled:  # the job's samples, not this rank's share
                self._samples_log = self.samples_trained(self.step - self._loss_n, self.step)
            record = {"step": self.step, "epoch": self.epoch, "loss": self._loss_sum / self._loss_n,
                      "lr": self.optimizer.param_groups[0]["lr"],
                      "samples_per_s": self._samples_log / max(now - self._t_log, 1e-9)}
            self._loss_sum, self._loss_n, self._samples_log, self._t_log = 0.0, 0, 0, now
            self.log(record)
            for cb in self.callbacks:
                cb.on_log(self, record)

    def _flush_losses(self) -> None:
        """The losses of the steps since the last flush, read in one sync (in a job: summed over the ranks
        in one all-reduce) and checked: a NaN or inf stops the run, naming the step it appeared at, before
        anything evaluates or checkpoints the damaged weights."""
        if not self._step_losses:
            return
        losses, self._step_losses = self._step_losses, []
        values = self.strategy.sum_losses(torch.stack(losses)).tolist()
        first = self.step - len(values) + 1
        for i, v in enumerate(values):
            if not math.isfinite(v):
                kept = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was kept"
                raise NonFiniteLoss(
                    f"train loss became {v} at step {first + i} (epoch {(first + i - 1) // self.steps_per_epoch + 1}); "
                    f"{kept}; lower train.lr (now {self.cfg.lr:g}), set train.grad_clip, or use train.precision=fp32")
            self._loss_sum += v  # in step order: the same sums however the flushes fall
        self._loss_n += len(values)

    @property
    def epoch(self) -> int:
        """1-based epoch of the most recent step."""
        return max(self.step - 1, 0) // self.steps_per_epoch + 1

    def log(self, record: dict) -> None:
        """Append a record to metrics.jsonl (if there is a run directory)."""
        if self._in_fit:
            self._metrics.write(record)
        elif self.run is not None and self.dist.is_main:
            self.run.append_metrics(record)

__all__ = ["Trainer", "Interrupted"]
