"""One prepared check for a machine with one NVIDIA GPU (at most ~8 minutes), in these parts:

1. GPT throughput: gpt-stdlib's model scaled to fill a GPU (12 layers, width 768, block 1024) in bf16 on
   random tokens: tokens/s and MFU (6N + attention FLOPs per token over the GPU's dense bf16 peak) of
   powertrain's Trainer and of a plain PyTorch loop of the same model, same batches, in this run; ratio;
   eager and compiled (with dynamo's graph breaks in powertrain's run).
2. Energy: the Meter's NVML energy for a window against a direct read of
   nvmlDeviceGetTotalEnergyConsumption around the same window; difference in %.
3. The GPU tier's checks as rows (tests/test_gpu_tier.py asserts them): the first loss in fp32 and under
   bf16 autocast; AdamW fused and TF32 on; frames torch.compile compiled after the first step and in
   evaluation (eager: none); a run cut at step 12 and resumed against the uninterrupted one. Seconds each.
4. fashion-speedrun (Fashion-MNIST IDX files from --fashion DIR) as shipped, with CUDA graphs
   (train.compile=reduce-overhead), and with 4x the batch: the whole `powertrain train` command's test
   accuracy and seconds (the bar: >= 0.935 within 15 s on one H100/H200).

    python bench/gpu.py                      # on the GPU machine: writes its table into docs/benchmarks.md
    python bench/gpu.py --dry-run            # the same code on CPU with tiny sizes (tests/test_bench_gpu.py)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import powertrain
from powertrain import Callback, DataBundle, Meter, TrainConfig, Trainer, models
from powertrain.data import DataMeta
from powertrain.measure import peak_for

from docs_section import write_section

FULL = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block": 1024, "batch": 16, "vocab": 512, "steps": 60, "warmup": 10}
TINY = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block": 32, "batch": 4, "vocab": 64, "steps": 6, "warmup": 2}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def gpt_and_data(s: dict, device: torch.device, seed: int = 0):
    """The model (seeded) and random-token batches: throughput does not depend on the text."""
    g = torch.Generator().manual_seed(seed)
    n = s["batch"] * (s["steps"] + s["warmup"])
    x = torch.randint(0, s["vocab"], (n, s["block"]), generator=g)
    y = torch.roll(x, -1, dims=1)
    meta = DataMeta((s["block"],), "language_model", vocab_size=s["vocab"], input_dtype=torch.long)
    torch.manual_seed(seed)
    model = models.build({"name": "gpt", "n_layer": s["n_layer"], "n_head": s["n_head"], "n_embd": s["n_embd"]}, meta)
    return model, DataBundle(powertrain.data.TensorSplit(x, y, name="train"), None, None, meta)


def flops_per_token(model: torch.nn.Module, s: dict) -> float:
    """6N (forward + backward of the weights, embeddings excluded as in nanoGPT) + attention 12 L d T."""
    n = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    return 6 * n + 12 * s["n_layer"] * s["n_embd"] * s["block"]


class StepTimes(Callback):
    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1 = warmup, None, None

    def on_step_end(self, trainer, loss):
        if trainer.step == self.warmup:
            sync(trainer.device)
            self.t0 = time.perf_counter()

    def on_fit_end(self, trainer):
        sync(trainer.device)
        self.t1 = time.perf_counter()


def powertrain_tokens_per_s(s: dict, device: torch.device, precision: str, compile: bool = False) -> float:
    model, data = gpt_and_data(s, device)
    clock = StepTimes(s["warmup"])
    cfg = TrainConfig(max_steps=s["steps"] + s["warmup"], batch_size=s["batch"], optimizer="adamw", lr=3e-4,
                      precision=precision, device=str(device), log_every=10**9, eval_every_steps=10**9, compile=compile)
    Trainer(model, data, cfg, callbacks=[clock]).fit()
    return s["steps"] * s["batch"] * s["block"] / (clock.t1 - clock.t0)


def plain_tokens_per_s(s: dict, device: torch.device, precision: str, compile: bool = False) -> float:
    """nanoGPT's loop: the same model, batches in the same order (epoch permutation of seed 0), AdamW
    (fused on CUDA), bf16 autocast; the loss read once at the end."""
    model, data = gpt_and_data(s, device)
    model.to(device)
    model = torch.compile(model, **COMPILE_KW) if compile else model
    x, y = (t.to(device) for t in data.train.tensors)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    t0 = None
    for step in range(s["steps"] + s["warmup"]):
        if step == s["warmup"]:
            sync(device)
            t0 = time.perf_counter()
        idx = order[step * s["batch"]:(step + 1) * s["batch"]]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x[idx])
            loss = F.cross_entropy(logits.flatten(0, 1), y[idx].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return s["steps"] * s["batch"] * s["block"] / (time.perf_counter() - t0)


def gpt_rows(s: dict, device: torch.device, precision: str, backend: str | None = None) -> list[str]:
    """Eager and compiled, plain loop against the Trainer (bars: compiled MFU >= 50%, ratio >= 1.0); the
    compiled rows count dynamo's graph breaks in powertrain's run (bar: none)."""
    from torch._dynamo.utils import counters

    model, _ = gpt_and_data(s, device)
    per_token = flops_per_token(model, s)
    peak = peak_for(device, precision, measure=device.type != "cpu")

    def mfu(tps):
        return f"{tps * per_token / peak.flops_per_s:.1%}" if peak else "no peak known"

    size = f"{s['n_layer']} layers, width {s['n_embd']}, block {s['block']}, batch {s['batch']}, {precision}"
    rows = []
    for compiled in (False, True):
        COMPILE_KW.clear()
        COMPILE_KW.update({"backend": backend} if compiled and backend else {})
        real = torch.compile
        torch.compile = lambda m, **kw: real(m, **{**kw, **COMPILE_KW})  # the dry run's backend for the Trainer too
        try:
            torch._dynamo.reset()
            plain = plain_tokens_per_s(s, device, precision, compiled)
            torch._dynamo.reset()
            breaks = sum(counters["graph_break"].values())
            ours = powertrain_tokens_per_s(s, device, precision, compiled)
            breaks = sum(counters["graph_break"].values()) - breaks
        finally:
            torch.compile = real
        what = f"compiled{f' ({backend} backend)' if backend else ''}, {breaks} graph breaks" if compiled else "eager"
        rows.append(f"| GPT tokens/s ({size}; {what}) | {plain:,.0f} (MFU {mfu(plain)}) | {ours:,.0f} (MFU "
                    f"{mfu(ours)}) | {ours / plain:.3f} |")
    return rows


COMPILE_KW: dict = {}  # torch.compile's arguments in gpt_rows (the dry run: backend 'eager')


def matmul_load(device: torch.device):
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)

    def work(seconds: float) -> None:
        nonlocal a
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a = (a @ a).clamp_(-1, 1)
        sync(device)
    return work


def energy_row(device: torch.device, seconds: float, nvml=None, work=None) -> str:
    """The Meter's NVML window against the raw counter (mJ) of GPU 0 read around the same window."""
    from powertrain.measure import NvmlBackend

    if nvml is None:
        if device.type != "cuda":
            return "| NVML energy, Meter vs raw counter | - | - | no GPU: not measured |"
        import pynvml as nvml
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    meter = Meter(backends=[NvmlBackend(nvml=nvml, gpus=[0])])
    work = work or matmul_load(device)
    e0 = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    meter.begin("window")
    work(seconds)
    w = meter.end("window")
    e1 = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    meter.close()
    raw_j = (e1 - e0) / 1000.0
    ours = sum(r.energy_j for r in w.energy if r.component == "gpu:0")
    diff = f"{(ours - raw_j) / raw_j:+.2%}" if raw_j else "no energy counted"
    return (f"| NVML energy over {w.time_s:.1f} s of load, Meter vs raw counter | {raw_j:,.1f} J (raw) | "
            f"{ours:,.1f} J ({w.energy_method}) | {diff} |")


def digits_mlp(seed: int = 0):
    data = powertrain.data.build({"name": "digits"}, seed=0)
    torch.manual_seed(seed)
    return models.build({"name": "mlp", "hidden": [64], "dropout": 0.0}, data.meta), data


class FirstLoss(Callback):
    def __init__(self):
        self.loss = None

    def on_step_end(self, trainer, loss):
        self.loss = float(loss) if self.loss is None else self.loss


def bf16_row(device: torch.device) -> str:
    """The same weights' first loss in fp32 and under bf16 autocast (tests/test_gpu_tier.py holds it to 2%)."""
    first = {}
    for precision in ("fp32", "bf16"):
        model, data = digits_mlp()
        rec = FirstLoss()
        Trainer(model, data, TrainConfig(max_steps=5, device=str(device), precision=precision), callbacks=[rec],
                meter=False).fit()
        first[precision] = rec.loss
    diff = (first["bf16"] - first["fp32"]) / first["fp32"]
    return f"| first loss, fp32 vs bf16 autocast (digits MLP) | {first['fp32']:.5f} | {first['bf16']:.5f} | {diff:+.3%} |"


def fused_row(device: torch.device) -> str:
    """The engine's rule: fused optimizers on CUDA (not under FSDP); TF32 for fp32 on Ampere and newer."""
    model, data = digits_mlp()
    t = Trainer(model, data, TrainConfig(max_steps=1, optimizer="adamw", device=str(device), precision="fp32"),
                callbacks=[], meter=False)
    fused = bool(t.optimizer.defaults.get("fused"))
    expected = device.type == "cuda"
    return (f"| AdamW fused, TF32 for fp32 | fused expected: {expected} | fused: {fused}, TF32: {t.tf32} | "
            f"{'as expected' if fused == expected else 'NOT as expected'} |")


def compile_row(device: torch.device, backend: str | None = None) -> str:
    """train.compile=true: frames dynamo compiled in the first step, in steps 2..6, and in two evaluations
    (evaluation runs eager: none expected). `backend`: 'eager' for the dry run
    (dynamo's capture without inductor's code generation)."""
    from torch._dynamo.utils import counters

    model, data = digits_mlp()
    frames = {}

    class Frames(Callback):
        def on_step_end(self, trainer, loss):
            frames[trainer.step] = counters["frames"]["ok"]

    real = torch.compile
    if backend:
        torch.compile = lambda m, **kw: real(m, backend=backend, **kw)
    try:
        torch._dynamo.reset()
        base = counters["frames"]["ok"]
        t = Trainer(model, data, TrainConfig(max_steps=6, device=str(device), compile=True, eval_every_steps=100),
                    callbacks=[Frames()]).fit()
        before = counters["frames"]["ok"]
        t.evaluate("val")
        t.evaluate("val")
        again = counters["frames"]["ok"] - before
    finally:
        torch.compile = real
    first, later = frames[1] - base, frames[6] - frames[1]
    ok = first >= 1 and later == 0 and again == 0
    return (f"| torch.compile{f' ({backend} backend)' if backend else ''}: frames compiled in step 1 / steps 2-6 / "
            f"two evals | - | {first} / {later} / {again} (step 1: {t.bill()['time_s']['compile']:.1f} s) | "
            f"{'no recompilation' if ok else 'RECOMPILED'} |")


def resume_row(device: torch.device) -> str:
    """digits-mlp in fp32 cut at step 12 (checkpoints every 5) and resumed, against the uninterrupted run."""
    import os
    import signal

    from safetensors.torch import load_file

    from powertrain.run.rundir import RunDir

    class InterruptAt(Callback):
        def on_step_end(self, trainer, loss):
            if trainer.step == 12:
                os.kill(os.getpid(), signal.SIGINT)

    args = ["train.max_steps=30", "train.checkpoint_every_steps=5", "train.log_every=5", f"train.device={device}",
            "train.precision=fp32"]
    with tempfile.TemporaryDirectory() as tmp:
        powertrain.train("digits-mlp", args, out=Path(tmp) / "whole", callbacks=[])
        try:
            powertrain.train("digits-mlp", args, out=Path(tmp) / "cut", callbacks=[InterruptAt()])
        except powertrain.Interrupted:
            pass
        powertrain.resume(Path(tmp) / "cut", callbacks=[])
        wa, wb = (load_file(str(RunDir(Path(tmp) / n).list_checkpoints()[-1] / "model.safetensors"))
                  for n in ("whole", "cut"))
    diff = max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)
    return (f"| cut at step 12, resumed, vs uninterrupted (digits-mlp, fp32) | - | max weight difference {diff:.3g} | "
            f"{'bit-equal' if diff == 0 else 'differs'} |")


FASHION_VARIANTS = [  # as shipped; CUDA graphs; and 4x the batch with the LR doubled, fewer launches per epoch
    ("fashion-speedrun", []),
    ("fashion-speedrun", ["train.compile=reduce-overhead"]),
    ("fashion-speedrun", ["train.compile=reduce-overhead", "train.batch_size=512", "train.lr=6e-3"]),
]


def fake_fashion(folder: Path, n_train: int = 256, n_test: int = 64) -> Path:
    """Fashion-MNIST's four gzipped IDX files with random 28x28 images (the dry run's stand-in)."""
    import gzip
    import struct

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8).numpy().tobytes()
        labels = torch.arange(n, dtype=torch.uint8).remainder(10).numpy().tobytes()
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(struct.pack(">IIII", 2051, n, 28, 28) + images))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", 2049, n) + labels))
    return folder


def fashion_rows(device: torch.device, fashion: str | None, dry: bool) -> str:
    """Each variant of FASHION_VARIANTS as a whole `powertrain train` command (the dry run: one epoch of
    random images in IDX files, the same command otherwise)."""
    if not dry and (not fashion or not Path(fashion).is_dir()):
        return "| fashion-speedrun | - | skipped: pass --fashion DIR (Fashion-MNIST IDX files) | - |"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if dry:
            fashion = str(fake_fashion(Path(tmp)))
        for n, (recipe, extra) in enumerate(FASHION_VARIANTS):  # as a user waits for it (bar: 15 s)
            if dry and any(e.startswith("train.compile") for e in extra):  # inductor on a CPU: ~15 s a variant
                rows.append(f"| {' '.join([recipe, *extra])} | - | dry run: not run (compiled; compile_row checks "
                            f"that path) | - |")
                continue
            extra = [*extra, "train.epochs=1"] if dry else extra
            out = Path(tmp) / f"run{n}"
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "powertrain", "train", recipe, *extra, f"data.path={fashion}",
                                f"train.device={device}", "--out", str(out), "--quiet"], capture_output=True, text=True)
            secs = time.perf_counter() - t0
            name = " ".join([recipe, *extra])
            if p.returncode:
                rows.append(f"| {name} | - | failed: {(p.stderr.strip().splitlines() or ['?'])[-1][:200]} | - |")
                continue
            ev, bill = (json.loads((out / f).read_text()) for f in ("eval.json", "bill.json"))
            rows.append(f"| {name}: `powertrain train`, whole command (bars: >= 0.935 within 15 s) | - | "
                        f"{ev['test']['accuracy']:.4f} in {secs:.0f} s ({bill['time_s']['total']:.0f} s training, "
                        f"{bill['throughput']['samples_per_s']:,.0f} samples/s) | - |")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU; writes nothing")
    p.add_argument("--fashion", help="folder of the Fashion-MNIST IDX files (for part 3)")
    p.add_argument("--energy-s", type=float, default=20.0, help="length of the energy window (s)")
    args = p.parse_args()
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.dry_run:
        print("bench/gpu.py: no CUDA device here; run it on a GPU machine, or pass --dry-run", file=sys.stderr)
        return 2
    sizes = TINY if args.dry_run else FULL
    precision = "fp32" if device.type == "cpu" else "bf16"
    rows = ["| check | plain PyTorch / reference | powertrain | ratio / difference |", "|---|---|---|---|"]
    rows += gpt_rows(sizes, device, precision, backend="eager" if args.dry_run else None)
    rows.append(energy_row(device, args.energy_s))
    rows.append(bf16_row(device))
    rows.append(fused_row(device))
    rows.append(compile_row(device, backend="eager" if args.dry_run else None))
    rows.append(resume_row(device))
    rows.append(fashion_rows(device, args.fashion, args.dry_run))
    table = "\n".join(rows)
    print(table)
    if not args.dry_run:
        name = torch.cuda.get_device_name()
        write_section("GPU (bench/gpu.py)", f"{name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}.\n"
                      f"Command: `python bench/gpu.py --fashion DIR`\n\n{table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
