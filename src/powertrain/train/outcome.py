"""What a Trainer measures and reaches: FLOP accounting, evaluation and early stopping, the final
evaluation into eval.json and the bill into bill.json. A mixin of `Trainer` (engine.py), split out so
that each file reads top to bottom.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..measure import forward_flops, train_step_flops
from .metrics import TaskMetrics


class Outcome:
    """Mixin of `Trainer`: FLOPs, evaluate, early stopping, finish, bill."""

    # ------------------------------------------------------------ FLOPs (counted once per shape)
    def batch_size_at(self, step: int) -> int:
        """Samples in the batch of optimizer step `step` (0-based): the last of an epoch may be short."""
        b = step % self.steps_per_epoch
        return min(self.cfg.batch_size, len(self.data.train) - b * self.cfg.batch_size)

    def _count_step_flops(self) -> None:
        """Forward+backward FLOPs of the model for the full and the short last batch, once, at construction
        (before sharding or recomputation change what runs). The model's own loss counts; the Trainer's
        `compute_loss` is not called here (a subclass may not be ready): `extra_step_flops` adds its part."""
        self._step_flops: dict[int, int] = {}  # (per-rank) batch size -> FLOPs of one train step
        sizes = {self.strategy.local(self.batch_size_at(0)),
                 self.strategy.local(self.batch_size_at(self.steps_per_epoch - 1))} - {0}
        order = torch.arange(len(self.data.train))
        own = self._model_loss
        for n in sizes:
            batch = next(self.data.train.batches(order, n))
            loss_fn = (lambda out, b=batch: own(b, out)) if own is not None else None
            with self._autocast():
                self._step_flops[n] = train_step_flops(self.model, batch[0], loss_fn=loss_fn).total
        self.model.eval()
        with self._autocast():
            self.forward_flops_per_sample = forward_flops(self.model, next(self.data.train.batches(order, 1))[0]).total
        self.model.train()

    def extra_step_flops(self, samples: int) -> int:
        """FLOPs a subclass's loss adds to a train step of `samples` (a distiller's teacher forward)."""
        return 0

    def train_flops(self, start: int, end: int) -> int:
        """Model FLOPs of optimizer steps [start, end) on this rank: forward + backward, no optimizer update."""
        spe, full, last = self.steps_per_epoch, self.batch_size_at(0), self.batch_size_at(self.steps_per_epoch - 1)
        n_last = end // spe - start // spe if last != full else 0  # steps s in [start, end) with s % spe == spe - 1
        full, last = self.strategy.local(full), self.strategy.local(last)  # this rank's share (a job sums them)
        per_full = self._step_flops.get(full, 0) + self.extra_step_flops(full)
        per_last = self._step_flops.get(last, 0) + self.extra_step_flops(last)
        return (end - start - n_last) * per_full + n_last * per_last

    def samples_trained(self, start: int = 0, end: Optional[int] = None) -> int:
        return sum(self.batch_size_at(s) for s in range(start, self.step if end is None else end))

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, split: str = "val") -> dict:
        """Loss and task metrics of `split` ('train', 'val' or 'test')."""
        data = self.data.split(split)
        was_training = self.model.training
        self.model.eval()
        metrics = TaskMetrics(self.task, self.num_classes)
        losses, counts = [], []  # per batch, on the device: read once at the end (no host sync per batch)
        window = "eval" if self._in_fit else "final_eval"
        if self.meter:
            self.meter.begin(window)
        try:
            for batch in self.strategy.batches(data, torch.arange(len(data)), self.cfg.eval_batch_size):
                with self._autocast():
                    outputs = self.forward(batch)
                    loss = self.compute_loss(batch, outputs)
                k = self.strategy.eval_samples(batch)
                if k:
                    losses.append(loss.detach().float())
                    counts.append(k)
                    metrics.update(outputs[0] if isinstance(outputs, (tuple, list)) else outputs, batch[-1])
            loss_sum = sum(v * k for v, k in zip(torch.stack(losses).tolist() if losses else [], counts))
        finally:
            self.model.train(was_training)
            if self.meter:
                self.meter.end(window, flops=sum(counts) * self.forward_flops_per_sample)
        loss_sum, n = self.strategy.reduce([loss_sum, sum(counts)], self.device)  # torchmetrics syncs its own states
        n = int(n)
        self.eval_samples[window] += n
        result = {"loss": loss_sum / max(n, 1), **metrics.compute()}
        for cb in self.callbacks:
            cb.on_eval_end(self, split, result)
        return result

    def _evaluate_val(self) -> None:
        """Evaluate on val (if any) and update early stopping."""
        self._write_epoch_lines()
        if self.data.val is None:
            return
        metrics = self.evaluate("val")
        self.log({"step": self.step, "epoch": self.epoch, "val": metrics})
        es = self.cfg.early_stop
        if es is None:
            return
        value, sign = metrics[es.metric], (-1 if es.metric in ("loss", "mse", "mae") else 1)
        if self.best is None or sign * (value - self.best["value"]) > es.min_delta:
            self.best, self._bad_evals = {"step": self.step, "value": value}, 0
            if self.run is not None:
                self.strategy.save_best(self.run.best_weights, self.model)
        else:
            self._bad_evals += 1
            if self._bad_evals >= es.patience:
                self.stop_reason = f"early stop: val {es.metric} did not improve for {es.patience} evaluations"

    def restore_best(self) -> None:
        """Load the best weights saved by early stopping (if any)."""
        if self.run is not None and self.strategy.on_main(lambda: self.run.best_weights.is_file()):
            self.strategy.load_best(self.run.best_weights, self.model, self.device)

    # ------------------------------------------------------------ the end: eval.json and bill.json
    def finish(self) -> dict:
        """The final evaluation (best weights under early stopping with restore_best) into eval.json,
        and the bill into bill.json; returns eval.json's content. `fit` calls it when it has a run_dir."""
        from .metrics import loss_names

        es = self.cfg.early_stop
        if es is not None and es.restore_best:
            self.restore_best()
        results = {s: self.evaluate(s) for s in ("test", "val") if getattr(self.data, s) is not None}
        for split_metrics in results.values():  # reconstruction: the loss also as "mse" (AE) or "elbo_nats" (VAE)
            split_metrics.update(loss_names(self.model, self.task, split_metrics["loss"]))
        results.update(stop_reason=self.stop_reason, step=self.step)
        bill = self.bill()  # a collective in a job
        if self.run is not None and self.dist.is_main:
            self.run.write("eval", results)
            self.run.write("bill", bill)
        self.results, self.final_bill = results, bill
        return results

    def bill(self) -> dict:
        """The bill of this Trainer so far (bill.make_bill over the Meter's totals and `bill_record`).
        In a job every rank calls it (a collective) and all get the job's bill."""
        from ..measure.bill import make_bill
        from ..measure.job import job_totals
        from .distributed import gather_objects

        totals = job_totals(self.meter, gather_objects if self.dist.enabled else None)
        record = self.bill_record()  # both collectives in a job: every rank takes part
        if not self.dist.is_main:
            return {"rank": self.dist.rank, "note": "the job's bill is rank 0's"}
        bill = make_bill(totals, record, self.meter)
        bill["device"]["threads"] = self.threads  # how many CPU threads, and why (measure/hardware.use_threads)
        if getattr(self, "precision_note", None):  # how 'auto' chose the precision (precision.py)
            bill["device"]["precision_auto"] = self.precision_note
        return bill

    def bill_record(self):
        """The plain figures a bill needs besides the Meter's totals."""
        from ..measure.bill import BillRecord
        from ..models import count_params
        from .distributed import describe_devices

        per_step = self._step_flops.get(self.strategy.local(self.batch_size_at(0)), 0)
        job = {"world_size": 1}
        if self.dist.enabled:
            per_step = int(self.strategy.reduce([per_step], self.device)[0])
            devices = describe_devices(self.device)
            job = {"world_size": self.dist.world_size, "strategy": self.dist.strategy, "devices": devices,
                   "nodes": len({(r["node"], r["node_rank"]) for r in devices})}
        return BillRecord(params=count_params(self.model), trainable_params=count_params(self.model, trainable_only=True),
                          flops_per_sample_forward=self.forward_flops_per_sample, flops_per_step_train=per_step or None,
                          train_flops=self.train_flops(0, self.step), steps=self.step,
                          samples_trained=self.samples_trained(), samples_evaluated=self.eval_samples["final_eval"],
                          device=self.device, precision=self.precision, tf32=self.tf32, phase_s=dict(self.phase_s),
                          job=job)
