"""A Trainer's checkpoints: everything a resume needs to continue bit for bit, saved at step boundaries.

The Trainer (engine.py) inherits this; it is split out to keep each file readable top to bottom. A
checkpoint is taken after everything due at its step (evaluation, early stopping) is done, so a run
resumed from it has nothing of that step left to do, and its metrics.jsonl continues exactly.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from ..errors import RunDirError
from ..run.rundir import MetricsLog


class TrainState:
    """Mixin of `Trainer`: state_dict / load_state_dict, save_checkpoint, resume."""

    def _open_run(self) -> "MetricsLog":
        """The run directory, made if needed (env.json: what this ran on), its lock held by this process."""
        self.run.path.mkdir(parents=True, exist_ok=True)
        self._owns_lock = self.run._lock_fd is None  # api.train holds it already; a rung-2 run takes it here
        self.run.lock()
        if self.step < self.cfg.warmup_steps or self.step == 0:  # the schedule's parts this run cannot reach
            from .optim import schedule_notes

            for note in schedule_notes(self.cfg, self.total_steps):
                print(f"powertrain: warning: {note}", file=sys.stderr, flush=True)
        if not self.run.env_file.exists():
            from ..run.atomic import write_json
            from ..measure.hardware import environment

            write_json(self.run.env_file, environment(self.device, self.threads))
        return self.run.metrics_log()

    def state_dict(self) -> dict:
        """Everything but the weights and the optimizer that a resume needs (in a job: a collective,
        holding every rank's RNG state and the job's meter totals)."""
        self._flush_losses()  # the running loss sum as floats (empty already at a step boundary)
        return {
            "step": self.step,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            **self.strategy.gather_rng(),
            "trainer": {"best": self.best, "bad_evals": self._bad_evals, "loss_sum": self._loss_sum,
                        "loss_n": self._loss_n, "stop_reason": self.stop_reason, "phase_s": dict(self.phase_s),
                        "eval_samples": self.eval_samples, "epoch_carry": self._epoch_carry,
                        "pending_lines": list(self._pending_lines), "metrics_bytes": self._metrics.offset(),
                        "precision": self._precision_state()},
            "meter": self._meter_state(),
        }

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
            from .distributed import gather_objects
            from ..measure.job import merge_meter_states

            state = merge_meter_states(gather_objects(state))
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.strategy.restore_rng(state, self.seed, self.step)
        t = state["trainer"]
        self.best, self._bad_evals, self._loss_sum, self._loss_n = t["best"], t["bad_evals"], t["loss_sum"], t["loss_n"]
        reason = t["stop_reason"]  # early stopping stays decided; a completed run may be extended; a signal is over
        self.stop_reason = reason if str(reason).startswith("early stop") else None
        self.phase_s, self.eval_samples = dict(t["phase_s"]), dict(t["eval_samples"])
        self._epoch_carry, self._pending_lines = t.get("epoch_carry"), list(t.get("pending_lines", []))
        self.metrics_bytes = t.get("metrics_bytes")  # metrics.jsonl's length at this checkpoint (resume cuts it there)
        self._load_precision_state(t.get("precision"))  # 'auto' as the run decided it: no new probe
        if self.meter and state.get("meter") and self.dist.is_main:
            self.meter.load_state_dict(state["meter"])

    def save_checkpoint(self) -> Optional[Path]:
        """Write a checkpoint of this step (in a job every rank calls it: rank 0 writes, or each rank
        its FSDP shards). A checkpoint of this step that exists already is rewritten."""
        if self.run is None:
            return None
        if self.meter:
            self._account_epochs()  # the checkpoint's meter totals include every epoch so far
        self._metrics.flush()  # a killed run keeps every line up to this checkpoint
        if self.meter:
            self.meter.begin("checkpoint")
        try:
            state = self.state_dict()  # a collective in a job
            path = self.strategy.save(self.run.checkpoint(self.step), self.model, self.optimizer, state)
            if self.dist.is_main:
                self.run.prune_checkpoints(self.cfg.keep_checkpoints)
        finally:
            if self.meter:
                self.meter.end("checkpoint")
        self.last_checkpoint = path if self.dist.is_main else None
        for cb in self.callbacks:
            cb.on_checkpoint(self, path)
        return path

    def resume(self, checkpoint: Optional[str] = None) -> bool:
        """Load the newest whole checkpoint of the run directory (or the one named, e.g. 'step-00000040');
        False if there is none. A damaged newest checkpoint is passed over with a note on stderr: training
        reaches its step again and rewrites it."""
        if self.run is None:
            return False
        path = self.strategy.on_main(lambda: self._checkpoint_to_load(checkpoint))
        if path is None:
            return False
        state = self.strategy.load(Path(path), self.model, self.optimizer, self.device)
        self.load_state_dict(state)
        self.last_checkpoint = Path(path) if self.dist.is_main else None
        return True

    def _checkpoint_to_load(self, name: Optional[str]) -> Optional[str]:
        from ..run.checkpoint import validate

        if name:
            return str(self.run.final_weights(name))
        found = self.run.list_checkpoints()
        for i, path in enumerate(reversed(found)):
            try:
                validate(path)
                return str(path)
            except RunDirError as e:
                if i == len(found) - 1:
                    raise RunDirError(f"{e}; no older checkpoint to resume from: train the run again") from None
                print(f"powertrain: note: {e}; resuming from the checkpoint before it (that step is trained again "
                      f"and its checkpoint rewritten)", file=sys.stderr)
        return None

    def apply_lr(self, lr: float, old: float) -> None:
        """Change the base learning rate of a restored optimizer from `old` to `lr` (a resume with
        train.lr=...): every group's rate and the schedule's bases scale by lr / old, so backbone
        multipliers and the schedule's shape are kept."""
        for g in self.optimizer.param_groups:
            g["lr"] *= lr / old
            if "initial_lr" in g:
                g["initial_lr"] *= lr / old
        if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [b * lr / old for b in self.scheduler.base_lrs]


__all__ = ["TrainState"]
