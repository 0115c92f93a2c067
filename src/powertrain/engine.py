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
`train_step(batch)`, or pass `Callback`s. Data order, splits and model init follow the seed, so
the same seed on CPU gives the same bits, and a resumed run equals an uninterrupted one.

Under torchrun (or `train.strategy` ddp/fsdp) every process builds the same Trainer; each trains on
its share of every global batch and only rank 0 writes (distributed.py). One process runs none of it.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint, distributed
from .callbacks import Callback, Progress
from .data import DataBundle
from .data.augment import augment_batch
from .measure import Meter, forward_flops, train_step_flops
from .errors import NonFiniteLoss
from .hardware import resolve_device, resolve_precision
from .metrics import TaskMetrics
from .models.check import dry_run
from .optim import build_optimizer, build_scheduler, freeze, param_groups
from .recipe import TrainConfig
from .rundir import MetricsLog

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer:
    def __init__(self, model: nn.Module, data: DataBundle, config: Optional[TrainConfig] = None, *,
                 run_dir: Optional[str | Path] = None, callbacks: Optional[Iterable[Callback]] = None,
                 seed: int = 0, meter: Optional[Meter | bool] = None):
        """`run_dir` receives metrics.jsonl and checkpoints (None: keep nothing on disk);
        `callbacks` defaults to a progress display; `meter` measures time, FLOPs and energy
        (default: a `Meter` over the counters this machine has; False: no measurement)."""
        self.cfg = cfg = config or TrainConfig()
        self.seed = seed
        self.dist = distributed.setup(cfg.strategy)  # single, or ddp/fsdp with rank and world
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.data = data.to(self.device)
        self.task, self.num_classes = data.meta.task, data.meta.num_classes
        self._augment = data.meta.extra.get("augment")
        self.model = model.to(self.device)
        if cfg.freeze:  # before DDP and FLOP counting: frozen weights get no gradient, the optimizer never sees them
            freeze(self.model, cfg.freeze)
        self._model_loss = getattr(model, "compute_loss", None)  # looked up once, not per step
        probe = next(self.data.train.batches(torch.arange(min(2, len(self.data.train))), 2))
        dry_run(self.model, probe[0])  # shape bugs fail here, naming the layer, not deep in a step
        self.steps_per_epoch = math.ceil(len(self.data.train) / cfg.batch_size)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self._autocast = (contextlib.nullcontext if self.precision == "fp32" else
                          lambda: torch.autocast(self.device.type, dtype=DTYPES[self.precision]))
        self._step_flops: dict[int, int] = {}  # (per-rank) batch size -> FLOPs of one train step, counted once
        self.forward_flops_per_sample = 0
        if self.dist.enabled or cfg.activation_checkpointing:
            self._count_step_flops()  # model FLOPs: before recomputation and sharding change what runs
        if cfg.activation_checkpointing:
            distributed.checkpoint_activations(self.model)
        if self.dist.enabled:
            run_dir = self._setup_distributed(run_dir)
        else:
            self.forward_model = torch.compile(self.model) if cfg.compile else self.model
        self.optimizer = build_optimizer(param_groups(self.model, cfg), cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" and self.device.type == "cuda" else None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.callbacks = ([Progress()] if self.dist.is_main else []) if callbacks is None else list(callbacks)
        self.step = 0  # optimizer steps done; epoch and position within it derive from it
        self.stop_reason: Optional[str] = None
        self.best: Optional[dict] = None  # {"step", "value"} of the best monitored evaluation
        self._bad_evals = 0
        self._last_eval_step = -1
        self._loss_sum, self._loss_n, self._t_log, self._samples_log = 0.0, 0, time.perf_counter(), 0
        self.last_checkpoint: Optional[Path] = None
        self._metrics = self._metrics_log()
        self._stopped_epochs: list = []  # epoch windows stopped, not yet accounted (see _epoch_window)
        self.meter = Meter() if meter is None or meter is True else (meter or None)
        if self.meter and not self.dist.reads_node_counters:
            distributed.drop_node_counters(self.meter)  # local rank 0 reads the node's counters for all
        self.phase_s = {"data": 0.0, "forward_backward": 0.0, "optimizer": 0.0}  # CPU: exact; CUDA: launch time
        self.eval_samples = {"eval": 0, "final_eval": 0}  # samples evaluated inside fit / after it
        self._in_fit = False

    def _setup_distributed(self, run_dir):
        """DDP or FSDP around the model; returns the run directory this rank writes (None but on rank 0).

        Rank r > 0 gets its own RNG stream (dropout, augmentation)."""
        d = self.dist
        distributed.seed_rank(self.seed, d.rank)
        if d.strategy == "fsdp":
            wrapped = distributed.wrap_fsdp(self.model, self.device, self.precision)
        else:
            wrapped = distributed.wrap_ddp(self.model, self.device)
        self._wrapped = torch.compile(wrapped) if self.cfg.compile else wrapped
        self.forward_model = self._sharded_forward
        self._grad_scale, self._shard_sizes = 1.0, (0, 0)
        own_step = self.train_step  # a subclass's train_step too

        def train_step(batch: tuple) -> torch.Tensor:
            n_local, n = self._shard_sizes
            self._grad_scale = n_local * d.world_size / n  # DDP/FSDP average: this makes it the global mean
            try:
                loss = own_step(batch)
            finally:
                self._grad_scale = 1.0
            total = (loss.detach() * (n_local / n)).reshape(1).to(torch.float64)
            torch.distributed.all_reduce(total)
            return total[0]

        self.train_step = train_step
        ckpt = distributed.broadcast_object(str(Path(run_dir) / "checkpoints") if run_dir is not None else None)
        self._ckpt_dir = Path(ckpt) if ckpt else None  # FSDP's ranks all write their shards there
        return run_dir if d.is_main else None

    def _sharded_forward(self, x):
        out = self._wrapped(x)
        return out if self._grad_scale == 1.0 else distributed.scale_grad(out, self._grad_scale)

    def _batches(self, split, order: torch.Tensor, batch_size: int, start: int = 0):
        """This rank's batches: all of each global batch in one process, its share in a job."""
        if not self.dist.enabled:
            return split.batches(order, batch_size, start)
        return self._shards(split, order, batch_size, start)

    def _shards(self, split, order, batch_size, start):
        for batch, n_local, n in distributed.shard_batches(split, order, batch_size, start, self.dist.rank,
                                                           self.dist.world_size):
            self._shard_sizes = (n_local, n)
            yield batch

    def _local(self, n: int) -> int:
        """Samples of a global batch of n that this rank trains on."""
        if not self.dist.enabled:
            return n
        lo, hi = distributed.shard_bounds(n, self.dist.rank, self.dist.world_size)
        return hi - lo

    # ------------------------------------------------------------ the step
    def forward(self, batch: tuple) -> torch.Tensor:
        return self.forward_model(batch[0])

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
        """Train until `total_steps` or early stopping; Ctrl-C saves a checkpoint first."""
        cfg, spe = self.cfg, self.steps_per_epoch
        self._t_log = time.perf_counter()
        self._count_step_flops()
        self._fit_start_step = self.step
        if self.meter:
            self.meter.begin("fit")
        self._in_fit = True
        self._metrics = self._metrics_log()  # run_dir may have changed since __init__ (prune sets it)
        self._metrics.open()  # kept open during fit: a line costs a write, not an open
        for cb in self.callbacks:
            cb.on_fit_start(self)
        try:
            while self.step < self.total_steps and self.stop_reason is None:
                epoch, start = divmod(self.step, spe)
                self._epoch_window(begin=True)
                t_data = time.perf_counter()
                for batch in self._batches(self.data.train, self.epoch_order(epoch), cfg.batch_size, start):
                    if self._augment is not None:  # train batches only; draws from the checkpointed RNG
                        batch = (augment_batch(batch[0], self._augment), *batch[1:])
                    self.phase_s["data"] += time.perf_counter() - t_data
                    loss = self.train_step(batch)
                    self.step += 1
                    self._after_step(loss.item(), len(batch[0]))
                    if self.step >= self.total_steps or self.stop_reason is not None:
                        break
                    if cfg.eval_every_steps and self.step % cfg.eval_every_steps == 0:
                        self._evaluate_and_checkpoint()
                    elif cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0:
                        self.save_checkpoint()
                    t_data = time.perf_counter()
                self._epoch_window(begin=False)
                if (self.step % spe == 0 and not cfg.eval_every_steps
                        and (self.step // spe) % cfg.eval_every_epochs == 0 and self.step < self.total_steps):
                    self._evaluate_and_checkpoint()
            if self.stop_reason is None:
                self.stop_reason = "completed"
            if self._last_eval_step != self.step:
                self._evaluate_and_checkpoint()
        except KeyboardInterrupt:
            self.stop_reason = "interrupted"
            self.save_checkpoint()
            raise
        finally:
            self._in_fit = False
            if self.meter and "epoch" in self.meter._open:  # interrupted mid-epoch
                self._epoch_window(begin=False)
            if self.meter:
                self._account_epochs()
                self.meter.end("fit", flops=self.train_flops(self._fit_start_step, self.step))
            self._metrics.close()
            for cb in self.callbacks:
                cb.on_fit_end(self)
        return self

    def _epoch_window(self, begin: bool) -> None:
        """Meter window around one epoch's training steps. Closing it only reads the clock and the
        counters (`Meter.stop`); `_account_epochs` turns it into the Window and its metrics.jsonl line
        at the next evaluation, checkpoint or the end of fit, off the hot loop."""
        if not self.meter:
            return
        if begin:
            self.meter.begin("epoch")
            self._epoch_start_step = self.step
        else:
            self._stopped_epochs.append((self.meter.stop("epoch"), self._epoch_start_step, self.step))

    def _account_epochs(self) -> None:
        """Each stopped epoch window -> metrics.jsonl {"step", "epoch", "window": "epoch", time_s, flops,
        energy_j, ...} ("partial": started or stopped mid-epoch); the Meter's totals then include them."""
        stopped, self._stopped_epochs = self._stopped_epochs, []
        for s, start, end in stopped:
            w = self.meter.account(s, flops=self.train_flops(start, end))
            flops, energy_j = w.flops, w.energy_j
            if self.dist.enabled:  # the job's FLOPs and energy: every rank's share (node counters read once per node)
                flops, energy_j = distributed.all_reduce_sum([flops or 0, energy_j], self.device)
                flops = int(flops)
            self.log({"step": end, "epoch": max(end - 1, 0) // self.steps_per_epoch + 1, "window": "epoch",
                      "time_s": w.time_s, "flops": flops, "energy_j": energy_j, "energy_method": w.energy_method,
                      "partial": start % self.steps_per_epoch != 0 or end % self.steps_per_epoch != 0})

    # ------------------------------------------------------------ FLOPs (counted once per shape)
    def batch_size_at(self, step: int) -> int:
        """Samples in the batch of optimizer step `step` (0-based): the last of an epoch may be short."""
        b = step % self.steps_per_epoch
        return min(self.cfg.batch_size, len(self.data.train) - b * self.cfg.batch_size)

    def _count_step_flops(self) -> None:
        """Count forward+backward FLOPs for the full and the short last batch, once, before training."""
        if self._step_flops or self.forward_flops_per_sample:
            return
        sizes = {self._local(self.batch_size_at(0)), self._local(self.batch_size_at(self.steps_per_epoch - 1))} - {0}
        order = torch.arange(len(self.data.train))
        for n in sizes:
            batch = next(self.data.train.batches(order, n))
            with self._autocast():
                self._step_flops[n] = train_step_flops(self.model, batch[0],
                                                       loss_fn=lambda out, b=batch: self.compute_loss(b, out)).total
        self.model.eval()
        with self._autocast():
            self.forward_flops_per_sample = forward_flops(self.model, next(self.data.train.batches(order, 1))[0]).total
        self.model.train()

    def train_flops(self, start: int, end: int) -> int:
        """Model FLOPs of optimizer steps [start, end) on this rank: forward + backward, no optimizer update."""
        spe, full, last = self.steps_per_epoch, self.batch_size_at(0), self.batch_size_at(self.steps_per_epoch - 1)
        n_last = end // spe - start // spe if last != full else 0  # steps s in [start, end) with s % spe == spe - 1
        full, last = self._local(full), self._local(last)  # this rank's share (a job sums the ranks')
        return (end - start - n_last) * self._step_flops.get(full, 0) + n_last * self._step_flops.get(last, 0)

    def samples_trained(self, start: int = 0, end: Optional[int] = None) -> int:
        return sum(self.batch_size_at(s) for s in range(start, self.step if end is None else end))

    def _after_step(self, loss: float, samples: int) -> None:
        if not math.isfinite(loss):
            kept = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was kept"
            raise NonFiniteLoss(
                f"train loss became {loss} at step {self.step} (epoch {self.epoch}); {kept}; "
                f"lower train.lr (now {self.cfg.lr:g}), set train.grad_clip, or use train.precision=fp32")
        self._loss_sum += loss
        self._loss_n += 1
        self._samples_log += samples
        for cb in self.callbacks:
            cb.on_step_end(self, loss)
        if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
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

    @property
    def epoch(self) -> int:
        """1-based epoch of the most recent step."""
        return max(self.step - 1, 0) // self.steps_per_epoch + 1

    def log(self, record: dict) -> None:
        """Append a record to metrics.jsonl (if there is a run directory)."""
        self._metrics.write(record)

    def _metrics_log(self) -> MetricsLog:
        return MetricsLog(self.run_dir / "metrics.jsonl" if self.run_dir is not None else None)

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, split: str = "val") -> dict:
        """Loss and task metrics of `split` ('train', 'val' or 'test')."""
        data = self.data.split(split)
        was_training = self.model.training
        self.model.eval()
        metrics = TaskMetrics(self.task, self.num_classes)
        loss_sum, n = 0.0, 0
        window = "eval" if self._in_fit else "final_eval"
        if self.meter:
            self.meter.begin(window)
        try:
            for batch in self._batches(data, torch.arange(len(data)), self.cfg.eval_batch_size):
                with self._autocast():
                    outputs = self.forward(batch)
                    loss = self.compute_loss(batch, outputs)
                k = self._shard_sizes[0] if self.dist.enabled else len(batch[0])  # 0: a stand-in sample
                if k:
                    loss_sum += float(loss) * k
                    n += k
                    metrics.update(outputs[0] if isinstance(outputs, (tuple, list)) else outputs, batch[-1])
        finally:
            self.model.train(was_training)
            if self.meter:
                self.meter.end(window, flops=n * self.forward_flops_per_sample)
        if self.dist.enabled:  # every rank evaluated its share; torchmetrics syncs its own states in compute()
            loss_sum, n = distributed.all_reduce_sum([loss_sum, n], self.device)
            n = int(n)
        self.eval_samples[window] += n
        result = {"loss": loss_sum / max(n, 1), **metrics.compute()}
        for cb in self.callbacks:
            cb.on_eval_end(self, split, result)
        return result

    def _evaluate_and_checkpoint(self) -> None:
        """Evaluate on val (if any), update early stopping, and save a checkpoint."""
        self._last_eval_step = self.step
        if self.meter:
            self._account_epochs()
        if self.data.val is not None:
            metrics = self.evaluate("val")
            self.log({"step": self.step, "epoch": self.epoch, "val": metrics})
            self._early_stop_update(metrics)
        self.save_checkpoint()

    def _early_stop_update(self, metrics: dict) -> None:
        es = self.cfg.early_stop
        if es is None:
            return
        if es.metric not in metrics:
            from .errors import RecipeError

            raise RecipeError(f"train.early_stop.metric: '{es.metric}' is not a validation metric; "
                              f"expected one of {', '.join(k for k, v in metrics.items() if isinstance(v, float))}")
        value, sign = metrics[es.metric], (-1 if es.metric in ("loss", "mse", "mae") else 1)
        if self.best is None or sign * (value - self.best["value"]) > es.min_delta:
            self.best, self._bad_evals = {"step": self.step, "value": value}, 0
            self._save_best()
        else:
            self._bad_evals += 1
            if self._bad_evals >= es.patience:
                self.stop_reason = f"early stop: val {es.metric} did not improve for {es.patience} evaluations"

    def _best_path(self) -> Optional[Path]:
        ckpt = self._ckpt_dir if self.dist.enabled else (self.run_dir / "checkpoints" if self.run_dir else None)
        return ckpt / "best.safetensors" if ckpt is not None else None

    def _save_best(self) -> None:
        if self.dist.strategy == "fsdp":  # gathered to rank 0, written there
            if self._ckpt_dir is not None:
                checkpoint.save_full_weights(self.model, self._best_path(), self.dist.is_main)
        elif self.run_dir is not None:
            checkpoint.save_weights(self.model, self.run_dir / "checkpoints" / "best.safetensors")

    def restore_best(self) -> None:
        """Load the best weights saved by early stopping (if any)."""
        path = self._best_path()
        if not self.dist.enabled:
            if path is not None and path.exists():
                from safetensors.torch import load_model

                load_model(self.model, str(path), device=str(self.device))
            return
        if not distributed.on_main(lambda: path is not None and path.exists()):
            return
        if self.dist.strategy == "fsdp":
            checkpoint.load_full_weights(self.model, path, self.dist.is_main)
        else:
            if self.dist.is_main:
                from safetensors.torch import load_model

                load_model(self.model, str(path), device=str(self.device))
            distributed.broadcast_module(self.model)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything but the weights that a resume needs to continue bit for bit (in a job: a collective,
        holding every rank's RNG state and the job's meter totals; FSDP's optimizer is in the shards)."""
        state = {
            "optimizer": None if self.dist.strategy == "fsdp" else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "trainer": {"best": self.best, "bad_evals": self._bad_evals, "loss_sum": self._loss_sum,
                        "loss_n": self._loss_n, "stop_reason": self.stop_reason,
                        "last_eval_step": self._last_eval_step, "phase_s": dict(self.phase_s),
                        "eval_samples": self.eval_samples},
            "meter": self._meter_state(),
        }
        if self.dist.enabled:
            state["rng_cpu_ranks"] = distributed.gather_objects(torch.get_rng_state())
            cuda = torch.cuda.get_rng_state() if self.device.type == "cuda" else None
            state["rng_cuda_ranks"] = distributed.gather_objects(cuda)
            state["world_size"] = self.dist.world_size
        return state

    def _meter_state(self) -> Optional[dict]:
        """Meter totals including the open 'fit' window so far, so a resumed bill covers the whole run."""
        if not self.meter:
            return None
        if "fit" in self.meter._open:
            self.meter.end("fit", flops=self.train_flops(self._fit_start_step, self.step))
            state = self.meter.state_dict()
            self.meter.begin("fit")
            self._fit_start_step = self.step
        else:
            state = self.meter.state_dict()
        if self.dist.enabled:  # the job's totals: rank 0 restores them on resume, the other ranks start from 0
            state = distributed.merge_meter_states(distributed.gather_objects(state))
        return state

    def load_state_dict(self, state: dict) -> None:
        d = self.dist
        self.step = int(state["step"])
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        ranks, cuda_ranks = state.get("rng_cpu_ranks"), state.get("rng_cuda_ranks")
        if d.enabled and ranks and len(ranks) == d.world_size:  # the same world: each rank's own stream
            torch.set_rng_state(ranks[d.rank].cpu())
            if cuda_ranks and cuda_ranks[d.rank] is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(cuda_ranks[d.rank].cpu())
        elif d.is_main:
            torch.set_rng_state(state["rng_cpu"].cpu())
            if state["rng_cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        else:  # another world size: ranks > 0 start fresh streams
            distributed.seed_rank(self.seed + self.step, d.rank)
        t = state["trainer"]
        self.best, self._bad_evals, self._loss_sum, self._loss_n = t["best"], t["bad_evals"], t["loss_sum"], t["loss_n"]
        self.stop_reason = t["stop_reason"] if str(t["stop_reason"]).startswith("early stop") else None
        self._last_eval_step = t["last_eval_step"]
        self.phase_s, self.eval_samples = dict(t["phase_s"]), dict(t["eval_samples"])
        if self.meter and state.get("meter") and d.is_main:
            self.meter.load_state_dict(state["meter"])

    def save_checkpoint(self) -> Optional[Path]:
        """Write a checkpoint (in a job: every rank calls it; rank 0 writes, or each rank its FSDP shard)."""
        d = self.dist
        if self.run_dir is None and not (d.enabled and self._ckpt_dir is not None):
            return None
        if self.meter:
            self._account_epochs()  # the checkpoint's meter totals include every epoch so far
        self._metrics.flush()  # a killed run keeps every line up to this checkpoint
        if self.meter:
            self.meter.begin("checkpoint")
        try:
            if d.strategy == "fsdp":
                path = checkpoint.save_sharded(self._ckpt_dir, self.step, self.model, self.optimizer,
                                               self.state_dict(), self.cfg.keep_checkpoints, d.is_main)
            else:
                state = self.state_dict()  # a collective in a job
                path = None if self.run_dir is None else checkpoint.save(
                    self.run_dir / "checkpoints", self.step, self.model, state, keep=self.cfg.keep_checkpoints)
        finally:
            if self.meter:
                self.meter.end("checkpoint")
        self.last_checkpoint = path if d.is_main else None
        for cb in self.callbacks:
            cb.on_checkpoint(self, path)
        return path

    def resume(self) -> bool:
        """Load the newest checkpoint of `run_dir`; False if there is none. In a job rank 0 reads it and
        sends it to the others (FSDP: every rank reads its shard, resharded to this world size)."""
        d = self.dist
        if not d.enabled:
            state = (checkpoint.load_latest(self.run_dir / "checkpoints", self.model, self.device, self.optimizer)
                     if self.run_dir else None)
            if state is None:
                return False
            self.load_state_dict(state)
            self.last_checkpoint = checkpoint.list_checkpoints(self.run_dir / "checkpoints")[-1]
            return True
        if self._ckpt_dir is None:
            return False
        if d.strategy == "fsdp":
            found = distributed.on_main(lambda: [str(p) for p in checkpoint.list_checkpoints(self._ckpt_dir)])
            if not found:
                return False
            path = Path(found[-1])
            state = checkpoint.load_sharded(path, self.model, self.optimizer, d.is_main)
        else:
            def load():
                state = checkpoint.load_latest(self._ckpt_dir, self.model, self.device, map_location="cpu")
                return None if state is None else (state, str(checkpoint.list_checkpoints(self._ckpt_dir)[-1]))

            loaded = distributed.on_main(load)
            if loaded is None:
                return False
            state, path = loaded[0], Path(loaded[1])
            distributed.broadcast_module(self.model)
        self.load_state_dict(state)
        self.last_checkpoint = path if d.is_main else None
        return True
