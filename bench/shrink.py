"""Full-length shrink runs for the Shrink issue's figures, written into docs/benchmarks.md:

    python bench/shrink.py prune      # fashion-convnet pruned to 80%, fine-tuned (bar: loses <= 1 point)
    python bench/shrink.py quantize   # mnist1d-gru and digits-mlp dynamic int8 (bar: >= 3x smaller on disk),
                                      # fashion-convnet static and dynamic int8: size, latency, accuracy
    python bench/shrink.py export     # ONNX parity of digits-mlp, fashion-convnet and gpt-stdlib (bar 1e-4)
    python bench/shrink.py all

Parents are full-length runs of the built-in recipes under --root (default /tmp/powertrain-shrink/NAME),
trained there when missing; `--parent NAME=RUN_DIR` uses an existing run instead. Derived runs go to
ROOT/NAME-METHOD (replaced on each call). Not a test: the parents take minutes to an hour on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch
import yaml

import powertrain
from powertrain.compress import export, prune, quantize
from powertrain.errors import PowertrainError

from docs_section import write_section

PRUNE = {"parent": "fashion-convnet", "sparsity": 0.8, "rounds": 1, "epochs": 2, "lr": None}
QUANTIZE = [("mnist1d-gru", "dynamic", 3.0), ("digits-mlp", "dynamic", 3.0), ("digits-mlp", "static", None),
            ("fashion-convnet", "dynamic", None), ("fashion-convnet", "static", None)]
EXPORT = ["digits-mlp", "fashion-convnet", "gpt-stdlib", "mnist1d-gru"]


def parent(name: str, root: Path, given: dict[str, str]) -> Path:
    """The parent run of recipe `name`: given, already under root, or trained now (full length)."""
    if name in given:
        return Path(given[name])
    path = root / name
    if (path / "recipe.yaml").is_file() and not (path / "eval.json").is_file():
        raise SystemExit(f"{path} holds an unfinished run (still training?): `powertrain resume {path}` or delete it")
    if not (path / "eval.json").is_file():
        print(f"== training the parent {name} into {path}", flush=True)
        powertrain.train(name, out=path, callbacks=[])
    return path


def child_dir(root: Path, name: str) -> Path:
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    return path


def machine() -> str:
    return (f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}, "
            f"load average {os.getloadavg()[0]:.1f} at the start (the machine is shared: times are inflated)")


def read(path: Path, name: str) -> dict:
    return json.loads((path / name).read_text())


def run_prune(root: Path, given: dict) -> None:
    cfg = PRUNE
    src = parent(cfg["parent"], root, given)
    load = machine()
    t0 = time.perf_counter()
    child = prune(src, sparsity=cfg["sparsity"], rounds=cfg["rounds"], epochs=cfg["epochs"], lr=cfg["lr"],
                  out=child_dir(root, f"{cfg['parent']}-prune80"), callbacks=[])
    wall_s = time.perf_counter() - t0
    rep, bill = read(child, "derived.json")["report"], read(child, "bill.json")
    m = rep["metrics"]
    before, pruned, after = (m["parent"]["test"]["accuracy"], m["after_prune"]["test"]["accuracy"],
                             m["final"]["test"]["accuracy"])
    loss_points = (before - after) * 100
    train = yaml.safe_load((child / "recipe.yaml").read_text())["train"]
    layers = ", ".join(f"{r['name']} {r['sparsity']:.1%}" for r in rep["layers"])
    sps = bill["steps"] / bill["time_s"]["fit"] if bill["time_s"]["fit"] else None
    body = (f"Command: `python bench/shrink.py prune` ({load}).\n"
            f"`powertrain prune {cfg['parent']}-RUN --sparsity {cfg['sparsity']} --rounds {cfg['rounds']} "
            f"--epochs {cfg['epochs']}`: global magnitude pruning of every Conv and Linear weight "
            f"(torch.nn.utils.prune, L1), then fine-tuning at lr {train['lr']:g} ({train['optimizer']}, cosine to 0).\n\n"
            "| parent | sparsity reached | parent test acc | after pruning | after fine-tuning | lost (points) | "
            "bar (<= 1 point) | fine-tuning | fine-tuning energy (estimated) |\n|---|---|---|---|---|---|---|---|---|\n"
            f"| {cfg['parent']} ({src}) | {rep['sparsity']:.2%} of {rep['prunable_params']:,} | {before:.4f} | "
            f"{pruned:.4f} | {after:.4f} | {loss_points:+.2f} | {'yes' if loss_points <= 1 else '**no**'} | "
            f"{bill['steps']} steps, {bill['time_s']['total']:.0f} s ({sps:.2f} steps/s), whole command {wall_s:.0f} s | "
            f"{bill['energy']['total_j']:.3g} J |\n\n"
            f"Per layer: {layers}. The zeros are stored densely: the checkpoint is as large, and a dense forward "
            f"pass as costly, as the parent's.")
    print(body)
    write_section("Pruning (bench/shrink.py prune)", body)


def run_quantize(root: Path, given: dict) -> None:
    load = machine()
    lines = ["| parent run (steps trained) | mode | int8 layers | size fp32 -> int8 (bytes) | ratio | bar | latency/sample fp32 -> int8 (ms) | "
             "speed-up | test accuracy fp32 -> int8 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, mode, bar in QUANTIZE:
        src = parent(name, root, given)
        print(f"== quantize {name} {mode}", flush=True)
        try:
            child = quantize(src, mode=mode, out=child_dir(root, f"{name}-int8-{mode}"))
        except PowertrainError as e:
            lines.append(f"| {name} | {mode} | not supported: {e} | | | | | | |")
            continue
        rep = read(child, "derived.json")["report"]
        s, lat, m = rep["size_bytes"], rep["latency_s_per_sample"], rep["metrics"]
        acc0, acc1 = m["parent"]["test"]["accuracy"], m["final"]["test"]["accuracy"]
        passed = "-" if bar is None else (f">= {bar:g}x: " + ("yes" if rep["size_ratio"] >= bar else "**no**"))
        kinds = sorted({layer.split("(")[-1].rstrip(")") for layer in rep["quantized_layers"]})
        steps = read(src, "eval.json")["step"]
        lines.append(f"| {name} ({steps}) | {mode} | {len(rep['quantized_layers'])} ({', '.join(kinds)}) | {s['fp32']:,} -> {s['int8']:,} | "
                     f"{rep['size_ratio']:.2f}x | {passed} | {lat['fp32'] * 1e3:.3f} -> {lat['int8'] * 1e3:.3f} | "
                     f"{rep['latency_ratio']:.2f}x | {acc0:.4f} -> {acc1:.4f} |")
        print(lines[-1], flush=True)
    setup = "batch 1, 1 thread, median of 200 forward passes after 20 warm-up, fp32 and int8 taking turns in 10 blocks"
    body = (f"Command: `python bench/shrink.py quantize` ({load}).\n"
            f"`powertrain quantize RUN --mode dynamic|static`; latency: {setup}; size: the safetensors file of the "
            f"fp32 weights against the int8 file (int8 weights with their scales, fp32 biases). A parent trained "
            f"shorter than its recipe says so by its step count. Backend "
            f"`{torch.backends.quantized.engine}`.\n\n" + "\n".join(lines))
    print(body)
    write_section("Quantization (bench/shrink.py quantize)", body)


def run_export(root: Path, given: dict) -> None:
    load = machine()
    lines = ["| recipe | model | params | ONNX bytes | max abs diff (torch vs onnxruntime) | largest abs output | bar | ok | "
             "export s |", "|---|---|---|---|---|---|---|---|---|"]
    for name in EXPORT:
        src = parent(name, root, given)
        print(f"== export {name}", flush=True)
        t0 = time.perf_counter()
        r = export(src, format="onnx", out=root / "onnx" / f"{name}.onnx")
        wall_s = time.perf_counter() - t0
        recipe, bill = powertrain.load_recipe(src / "recipe.yaml"), read(src, "bill.json")
        lines.append(f"| {name} | {recipe.model.name} | {bill['params']:,} | {r['bytes']:,} | {r['max_abs_diff']:.2e} | "
                     f"{r['max_abs_output']:.3g} | {r['bar']:g} | {'yes' if r['ok'] else '**no**'} | {wall_s:.0f} |")
        print(lines[-1], flush=True)
    body = (f"Command: `python bench/shrink.py export` ({load}).\n"
            f"`powertrain export RUN --format onnx`: torch.onnx dynamo exporter, dynamic batch; the file is run by "
            f"onnxruntime (CPU) on {r['checked'].split(', ', 1)[1]} test samples (val for gpt-stdlib) and compared "
            f"with the torch model ({r['checked'].split(',')[0]}).\n\n" + "\n".join(lines))
    print(body)
    write_section("ONNX export parity (bench/shrink.py export)", body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["prune", "quantize", "export", "all"])
    p.add_argument("--root", default="/tmp/powertrain-shrink", help="where parents and derived runs go")
    p.add_argument("--parent", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="use this run as the parent of recipe NAME (repeatable)")
    args = p.parse_args()
    given = dict(item.split("=", 1) for item in args.parent)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    for what, fn in (("prune", run_prune), ("quantize", run_quantize), ("export", run_export)):
        if args.what in (what, "all"):
            fn(root, given)


if __name__ == "__main__":
    main()
