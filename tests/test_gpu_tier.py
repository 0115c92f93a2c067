"""The GPU tier (`pytest -m gpu`): what the Trainer does on a real CUDA device, checked on one. Every test
here is skipped where torch.cuda.is_available() is False (CPU machines: the fakes of test_gpu_paths.py
stand in), and each takes seconds on a datacentre GPU.

- bf16 autocast trains, with a first loss close to fp32's, and 'auto' picks bf16 on a GPU that has it;
- AdamW is fused on CUDA (the engine's rule: a CUDA device and not FSDP), and fp32 runs on TF32 (Ampere+);
- the Meter's NVML window equals the raw counter (nvmlDeviceGetTotalEnergyConsumption) read around it;
- train.compile=true trains, compiles once, and evaluation (eager) compiles nothing;
- a run interrupted at a checkpoint and resumed ends where an uninterrupted one does;
- DDP over every visible GPU (two or more) trains as one process does, one rank per GPU.
"""
import json
import os
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import powertrain
from powertrain import Callback, TrainConfig, Trainer, data, models
from powertrain.run.rundir import RunDir
from interrupt import InterruptAt  # tests/interrupt.py

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="gpu tier: torch.cuda.is_available() is False")]


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_step_end(self, trainer, loss):
        self.values.append(loss)


@pytest.fixture
def digits():
    return data.build({"name": "digits"}, seed=0)


def mlp(meta, seed=0):
    torch.manual_seed(seed)
    return models.build({"name": "mlp", "hidden": [64], "dropout": 0.0}, meta)


def test_bf16_autocast_trains_close_to_fp32(digits):
    losses = {}
    for precision in ("fp32", "bf16"):
        rec = Losses()
        t = Trainer(mlp(digits.meta), digits, TrainConfig(max_steps=10, device="cuda", precision=precision),
                    callbacks=[rec], meter=False).fit()
        assert t.device.type == "cuda" and t.precision == precision
        losses[precision] = [float(v) for v in rec.values]
    assert all(torch.isfinite(torch.tensor(v)).all() for v in losses.values())
    # the first loss is the same weights' forward pass: bf16's 8-bit mantissa moves it by well under 2%
    assert losses["bf16"][0] == pytest.approx(losses["fp32"][0], rel=0.02)
    assert losses["bf16"][-1] < losses["bf16"][0]  # and it learns
    auto = Trainer(mlp(digits.meta), digits, TrainConfig(max_steps=1), callbacks=[], meter=False)
    assert auto.device.type == "cuda"
    assert auto.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")  # hardware.resolve_precision


def test_adamw_is_fused_on_cuda_and_fp32_runs_on_tf32(digits):
    t = Trainer(mlp(digits.meta), digits, TrainConfig(max_steps=2, optimizer="adamw", device="cuda", precision="fp32"),
                callbacks=[], meter=False).fit()
    assert isinstance(t.optimizer, torch.optim.AdamW) and t.optimizer.defaults["fused"] is True
    assert all(p.is_cuda for g in t.optimizer.param_groups for p in g["params"])
    assert t.tf32 == (torch.cuda.get_device_capability(t.device)[0] >= 8)
    assert t.bill()["device"]["tf32"] == t.tf32


def test_meter_nvml_window_equals_the_raw_counter():
    """NVML's energy counter updates about every 100 ms; the raw reads sit just outside the Meter's, so over
    a 3 s window of matmuls the two may differ by at most one update at each end: within 10%."""
    pynvml = pytest.importorskip("pynvml", reason="gpu tier: nvidia-ml-py is not installed")
    from powertrain.measure import Meter, NvmlBackend

    backend = NvmlBackend(nvml=pynvml)
    if "gpu:0" not in backend._counters:
        pytest.skip(f"gpu tier: GPU 0 has no NVML energy counter ({backend.note})")
    handle = backend._counters["gpu:0"]  # the handle of CUDA device 0 (CUDA_VISIBLE_DEVICES followed)
    meter = Meter(backends=[backend])
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    e0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    meter.begin("window")
    start = time.perf_counter()
    while time.perf_counter() - start < 3.0:
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()
    w = meter.end("window")
    e1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    meter.close()
    raw_j = (e1 - e0) / 1000.0  # mJ
    ours = sum(r.energy_j for r in w.energy if r.component == "gpu:0")
    assert raw_j > 0 and w.energy_method == "measured:nvml"
    assert ours == pytest.approx(raw_j, rel=0.10), (ours, raw_j)


def test_compile_trains_and_evaluation_compiles_nothing(digits):
    """The first step compiles (billed as the 'compile' window); later steps reuse its graph. Evaluation runs
    the model eager (Trainer.forward in eval mode), so no evaluation compiles an eval-mode graph."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    base, frames = counters["frames"]["ok"], {}  # frames compiled so far in this process

    class Frames(Callback):
        def on_step_end(self, trainer, loss):
            frames[trainer.step] = counters["frames"]["ok"] - base

    cfg = TrainConfig(max_steps=6, batch_size=64, device="cuda", compile=True, eval_every_steps=100)
    t = Trainer(mlp(digits.meta), digits, cfg, callbacks=[Frames()]).fit()  # 6 full batches: one shape
    assert t.forward_model is not t.model and frames[1] >= 1, frames
    assert frames[6] == frames[1], f"training steps after the first compiled again: {frames}"
    assert t.bill()["time_s"]["compile"] > 0
    before = counters["frames"]["ok"]
    t.evaluate("val")
    assert counters["frames"]["ok"] == before, "an evaluation compiled"


def test_resume_on_the_gpu_ends_where_an_uninterrupted_run_does(tmp_path):
    """digits-mlp (dropout: the CUDA RNG state is in the checkpoint) in fp32, checkpoints every 5 steps, cut
    at step 12 and resumed. The same kernels on the same shapes: expected bit-equal; the tolerance (1e-6)
    leaves room only for a cuBLAS algorithm chosen differently after the restart."""
    args = ["train.epochs=2", "train.checkpoint_every_steps=5", "train.log_every=4", "train.device=cuda",
            "train.precision=fp32"]
    powertrain.train("digits-mlp", args, out=tmp_path / "whole", callbacks=[])
    with pytest.raises(powertrain.Interrupted):
        powertrain.train("digits-mlp", args, out=tmp_path / "cut", callbacks=[InterruptAt(13)])
    assert RunDir(tmp_path / "cut").list_checkpoints()[-1].name == "step-00000012"
    powertrain.resume(tmp_path / "cut", callbacks=[])
    wa, wb = (load_file(str(RunDir(p).list_checkpoints()[-1] / "model.safetensors"))
              for p in (tmp_path / "whole", tmp_path / "cut"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-6, atol=1e-6)
    ea, eb = (json.loads((p / "eval.json").read_text()) for p in (tmp_path / "whole", tmp_path / "cut"))
    assert ea["test"]["loss"] == pytest.approx(eb["test"]["loss"], rel=1e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="gpu tier: DDP needs at least 2 visible GPUs")
def test_ddp_on_every_visible_gpu_trains_as_one_process(tmp_path):
    """`--nproc N` (torchrun, nccl) on the N visible GPUs against one GPU: the same losses to 1e-3 (fp32 on
    TF32: the ranks' gradients are summed in another order), one bill naming N distinct CUDA devices."""
    from test_distributed import run_job

    n = torch.cuda.device_count()
    args = ["digits-mlp", "model.dropout=0", "train.max_steps=16", "train.log_every=1", "train.precision=fp32"]
    run_job([sys.executable, "-m", "powertrain", "train", *args, "--nproc", str(n), "--out", str(tmp_path / "ddp")],
            dict(os.environ), timeout=300)
    one = powertrain.train(args[0], args[1:], out=tmp_path / "one", callbacks=[])
    losses = [[r["loss"] for r in map(json.loads, (p / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
              for p in (tmp_path / "ddp", one.dir)]
    assert len(losses[0]) == len(losses[1]) == 16
    assert max(abs(a - b) for a, b in zip(*losses)) < 1e-3, losses
    bill = json.loads((tmp_path / "ddp" / "bill.json").read_text())
    assert bill["device"]["world_size"] == n
    assert sorted(d["device"] for d in bill["device"]["devices"]) == sorted(f"cuda:{i}" for i in range(n))
