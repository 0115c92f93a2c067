"""Transfer learning, the Shrink issue's example: pretrain on Fashion-MNIST, fine-tune on 500 samples of
MNIST-format digits, against training from scratch on the same 500, mean over 3 seeds (also with 5 epochs
instead of 30, and with 100 samples); the table goes into docs/benchmarks.md.

    python bench/transfer.py [--pretrained RUN_DIR] [--root /tmp/powertrain-transfer]

There is no MNIST on this machine: the digits are sklearn's 1,797 8x8 digits (0..16), upsampled
bilinearly to 28x28 and scaled to 0..255, written as the four MNIST IDX files (1,297 train / 500 test,
stratified, fixed seed) and read by the `mnist` dataset with `train_limit` (val, 10%, held out first).
The pretrained model is a full-length `fashion-convnet` run (trained under --root when not given).
Every variant uses the fashion-convnet model and schedule (AdamW, onecycle, lr 3e-3), batch BATCH, for
each (train samples, epochs) of BUDGETS:

    scratch          random init
    init all         model.init_from: every tensor, the 10-way fashion head too
    new head         init_from without the head (model.init_exclude: ["9.*"]), train.backbone_lr_mult 0.1
    frozen convs     init_from without the head, train.freeze: the two conv layers ["0.*", "3.*"]

Set OMP_NUM_THREADS=1 on a shared machine (see bench/distill.py).
"""
from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
import struct
import time
from pathlib import Path

import numpy as np
import torch

import powertrain

from docs_section import write_section

BATCH = 32
BUDGETS = [(500, 30), (500, 5), (100, 30)]  # (train samples, epochs): the 500, a short run, fewer samples
VARIANTS = [  # (folder, label, overrides)
    ("scratch", "scratch", []),
    ("init-all", "init all", ["model.init_from={pre}"]),
    ("new-head-lr", "new head, backbone LR x0.1", ["model.init_from={pre}", "model.init_exclude=[9.*]",
                                                    "train.backbone_lr_mult=0.1"]),
    ("new-head-frozen", "new head, convs frozen", ["model.init_from={pre}", "model.init_exclude=[9.*]",
                                                  "train.freeze=[0.*,3.*]"]),
]


def write_digits28(folder: Path) -> Path:
    """sklearn's digits, 8x8 -> 28x28 (bilinear), as MNIST IDX files: 1,297 train, 500 test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    img = torch.nn.functional.interpolate(torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8), size=(28, 28),
                                          mode="bilinear", align_corners=False)
    img = (img / 16 * 255).round().clamp(0, 255).to(torch.uint8).view(-1, 28, 28).numpy()
    xa, xb, ya, yb = train_test_split(img, y.astype(np.uint8), test_size=500, random_state=0, stratify=y)
    folder.mkdir(parents=True, exist_ok=True)
    names = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    for split, (images, labels) in (("train", (xa, ya)), ("test", (xb, yb))):
        for name, arr in zip(names[split], (images, labels)):
            arr = np.ascontiguousarray(arr, dtype=np.uint8)
            head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
            (folder / f"{name}.gz").write_bytes(gzip.compress(head + arr.tobytes()))
    return folder


def pretrained_run(root: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    path = root / "fashion-convnet"
    if not (path / "eval.json").is_file():
        shutil.rmtree(path, ignore_errors=True)
        print(f"== pretraining fashion-convnet into {path}", flush=True)
        powertrain.train("fashion-convnet", out=path, callbacks=[])
    return path


def run_budget(root: Path, pre: Path, digits: Path, limit: int, epochs: int, seeds: list[int]) -> dict[str, list[dict]]:
    base = ["data.name=mnist", f"data.path={digits}", f"data.train_limit={limit}", f"train.epochs={epochs}",
            f"train.batch_size={BATCH}", "train.log_every=100"]
    results: dict[str, list[dict]] = {}
    for folder, name, extra in VARIANTS:
        for seed in seeds:
            out = root / f"n{limit}-e{epochs}" / f"{folder}-s{seed}"
            shutil.rmtree(out, ignore_errors=True)
            run = powertrain.train("fashion-convnet", [*base, *(e.format(pre=pre) for e in extra), f"run.seed={seed}"],
                                   out=out, callbacks=[])
            b = run.bill
            results.setdefault(name, []).append({"acc": run.metrics["test"]["accuracy"], "trainable": b["trainable_params"],
                                                 "steps_per_s": b["steps"] / b["time_s"]["fit"], "steps": b["steps"]})
            print(f"{limit} samples, {epochs} epochs, {name}, seed {seed}: {results[name][-1]['acc']:.4f}", flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/powertrain-transfer")
    p.add_argument("--pretrained", help="an existing fashion-convnet run directory")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    pre = pretrained_run(root, args.pretrained)
    digits = write_digits28(root / "digits28")
    lines = [
        f"Pretrained: `fashion-convnet` on Fashion-MNIST ({pre}). Fine-tuned and from scratch: the same model on "
        f"a subset of sklearn's digits upsampled 8x8 -> 28x28 and written as MNIST IDX files (no real MNIST here; "
        f"test: 500 other digits, so one test sample is 0.002), batch {BATCH} on the fashion-convnet schedule "
        f"(AdamW, onecycle, lr 3e-3).",
        "",
        "| train samples, epochs (steps) | variant | " + " | ".join(f"seed {s}" for s in args.seeds) +
        " | mean ± std | vs scratch | trainable params |",
        "|---|---|" + "---|" * len(args.seeds) + "---|---|---|",
    ]
    speeds = []
    for limit, epochs in BUDGETS:
        results = run_budget(root, pre, digits, limit, epochs, args.seeds)
        scratch = statistics.mean(r["acc"] for r in results["scratch"])
        for name, rs in results.items():
            accs = [r["acc"] for r in rs]
            ms = f"{statistics.mean(accs):.4f} ± {statistics.stdev(accs):.4f}" if len(accs) > 1 else f"{accs[0]:.4f}"
            lines.append(f"| {limit}, {epochs} ({rs[0]['steps']}) | {name} | " + " | ".join(f"{a:.4f}" for a in accs) +
                         f" | {ms} | {statistics.mean(accs) - scratch:+.4f} | {rs[0]['trainable']:,} |")
            speeds += [r["steps_per_s"] for r in rs]
    lines += ["", f"Measured {time.strftime('%Y-%m-%d')} on CPU, torch {torch.__version__}, {torch.get_num_threads()} "
                  f"thread(s), load average {load:.1f} at the start; {statistics.mean(speeds):.1f} steps/s on average "
                  f"(a shared machine). Runs under {root}."]
    body = "\n".join(lines)
    write_section("Transfer learning (bench/transfer.py)", body)
    print(body)


if __name__ == "__main__":
    main()
