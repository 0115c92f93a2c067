"""`train.precision: auto` on a CPU: bf16 autocast only where a short measured probe shows it faster.

On a GPU 'auto' is decided by the hardware (hardware.resolve_precision). On a CPU with native bf16
(AVX512-BF16, AMX) autocast pays for large matmuls and convolutions and costs casts elsewhere, so the
answer depends on the model: at the start of a new run's fit the Trainer times a few forward+backward
passes of a copy of its model on one real batch, fp32 against bf16 autocast, alternating, the median of each,
and keeps bf16 only if it is at least `SPEEDUP_BAR` times as fast. A run expected to train for less than
`SHORT_RUN_S` keeps fp32 without the full probe (it could not save what the probe costs).

The decision is a line on the progress stream, a field of the bill (`device.precision_auto`, beside
`device.precision`) and part of every checkpoint: a resumed run uses the recorded precision and
never probes again, so it stays bit-equal to an uninterrupted one.

>>> t = [0.0]
>>> def step(bf16): t[0] += 0.5 if bf16 else 1.0  # a fake step: fp32 takes 1 s, bf16 0.5 s
>>> probe_speedup(step, clock=lambda: t[0], budget_s=0.0)
2.0
>>> decide(2.0)[0], decide(1.05)[0]
('bf16', 'fp32')
"""
from __future__ import annotations

import contextlib
import copy
import statistics
import time
from typing import Callable, Optional

import torch

from ..measure.hardware import cpu_has_native_bf16, resolve_precision

SPEEDUP_BAR = 1.10  # bf16 must be at least this much faster than fp32 to be picked
SHORT_RUN_S = 10.0  # expected training time below which 'auto' keeps fp32 without the full probe
BUDGET_S = 1.0  # seconds of timed steps (at least MIN_PAIRS pairs, at most MAX_PAIRS)
MIN_PAIRS, MAX_PAIRS = 5, 60
clock: Callable[[], float] = time.perf_counter  # tests replace it with a fake timer
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def probe_speedup(step: Callable[[bool], None], *, clock: Optional[Callable[[], float]] = None,
                  budget_s: float = BUDGET_S, min_pairs: int = MIN_PAIRS, max_pairs: int = MAX_PAIRS) -> float:
    """fp32 step time over bf16 step time: `step(bf16)` runs one forward+backward pass. Steps alternate
    fp32, bf16, fp32, ... (at least `min_pairs` pairs, more until `budget_s` is spent), so load on the
    machine falls on both alike, and each precision's median step counts: a burst of load on a few
    steps moves no median. (The fastest step would be the usual choice, but here fp32's fastest steps
    are far from its typical one: on mnist1d-cnn the fastest fp32 and bf16 steps tie while the medians
    differ by 15%.) The caller warms both up first."""
    clock = clock or globals()["clock"]
    times: dict[bool, list[float]] = {False: [], True: []}
    start = clock()
    for i in range(max_pairs):
        for bf16 in (False, True):
            t0 = clock()
            step(bf16)
            times[bf16].append(clock() - t0)
        if i + 1 >= min_pairs and clock() - start >= budget_s:
            break
    return statistics.median(times[False]) / max(statistics.median(times[True]), 1e-12)


def decide(speedup: float) -> tuple[str, str]:
    """(precision, what the run records about the choice)."""
    if speedup >= SPEEDUP_BAR:
        return "bf16", f"bf16 (auto: probe {speedup:.2f}x faster than fp32)"
    return "fp32", f"fp32 (auto: bf16 probe not measurably faster: {speedup:.2f}x fp32's speed, bar {SPEEDUP_BAR:.2f}x)"


class AutoPrecision:
    """Mixin of `Trainer`: the precision, its autocast, and the CPU probe of `precision: auto`."""

    def _init_precision(self, asked: str) -> None:
        self.set_precision(resolve_precision(asked, self.device))
        self._precision_pending = asked == "auto" and self.device.type == "cpu"  # probed at the start of fit

    def set_precision(self, precision: str, note: Optional[str] = None) -> None:
        """Train and evaluate in `precision` from now on ('fp32', 'bf16', 'fp16'); `note`: how 'auto' chose it."""
        self.precision, self.precision_note, self._precision_pending = precision, note, False
        self._autocast = (contextlib.nullcontext if precision == "fp32" else
                          lambda: torch.autocast(self.device.type, dtype=DTYPES[precision]))

    def _precision_state(self) -> dict:
        return {"precision": self.precision, "precision_note": self.precision_note, "device_type": self.device.type}

    def _load_precision_state(self, state: Optional[dict]) -> None:
        """A checkpoint's precision wins over a new probe on the same kind of device (bit-equal resume).
        A checkpoint from before the probe existed trained 'auto' on a CPU in fp32."""
        if not self._precision_pending:
            return
        if state is None:
            self.set_precision("fp32", "fp32 (auto: recorded before the CPU probe existed)")
        elif state["device_type"] == self.device.type:
            self.set_precision(state["precision"], state["precision_note"])

    def adopt_recorded_precision(self, bill: Optional[dict]) -> None:
        """Evaluate a finished run as it trained: in the precision its probe chose (bill.json), not a new probe."""
        device = (bill or {}).get("device", {})
        if self._precision_pending and device.get("precision_auto") and device.get("type") == self.device.type:
            self.set_precision(device["precision"], device["precision_auto"])

    def _probe_precision(self) -> None:
        """At the start of a new run's fit (a resumed run has its precision from the checkpoint): decide
        (the checkpoints and the bill record it) and say so on the progress stream. In a job rank 0 probes and every rank takes its answer."""
        if not self._precision_pending:
            return
        precision, note = self.strategy.on_main(self._decide_precision)
        self.set_precision(precision, note)
        from .callbacks import Progress

        for cb in self.callbacks:
            if isinstance(cb, Progress):
                print(f"precision: {note}", file=cb.stream, flush=True)

    def _decide_precision(self) -> tuple[str, str]:
        if not cpu_has_native_bf16():
            return "fp32", "fp32 (auto: this CPU has no native bf16, so bf16 would be emulated)"
        if self.dist.strategy == "fsdp" or type(self).train_step.__qualname__ != "Trainer.train_step":
            return "fp32", f"fp32 (auto: not probed for {type(self).__name__} under {self.dist.strategy})"
        return self._run_probe()

    def _run_probe(self) -> tuple[str, str]:
        model = copy.deepcopy(self.model).train()  # the run's model, weights, buffers and RNG untouched
        loss_fn = getattr(model, "compute_loss", None) or self.compute_loss
        n = max(1, self.strategy.local(self.cfg.batch_size) // self.cfg.accumulate)
        batch = next(iter(self.data.train.batches(torch.arange(len(self.data.train)), n)))

        def step(bf16: bool) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                loss = loss_fn(batch, model(batch[0]))
            loss.backward()
            model.zero_grad(set_to_none=True)

        with torch.random.fork_rng(devices=[]):
            step(False)  # warm-up: first-call allocation
            t0 = clock()
            step(False)
            expected_s = (clock() - t0) * self.total_steps * self.cfg.accumulate
            if expected_s < SHORT_RUN_S:  # decided before bf16 runs at all (its first call picks oneDNN kernels: ~1 s)
                return "fp32", f"fp32 (auto: a short run, ~{expected_s:.1f} s in fp32; not worth a bf16 probe)"
            if self.meter:  # inside fit (billed there) and apart from the steps' throughput; not opened for a
                self.meter.begin("precision_probe")  # short run: a window reads the counters (in a job, rank 0's only)
            try:
                step(True)  # bf16's warm-up
                return decide(probe_speedup(step))
            finally:
                if self.meter:
                    self.meter.end("precision_probe")


__all__ = ["AutoPrecision", "probe_speedup", "decide", "SPEEDUP_BAR", "SHORT_RUN_S"]
