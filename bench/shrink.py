"""Full-length shrink runs for the Shrink issue's figures, written into docs/benchmarks.md:

    python bench/shrink.py table      # fashion-convnet: parent, pruned (50% of the channels, structured),
                                      # int8 (torchao weight-only and dynamic, eager static), distilled student
                                      # of the pruned widths: params, FLOPs, bytes, latency at batch 1 and 64,
                                      # J per inference sample, accuracy, measured side by side
                                      # (bar: structured pruning loses <= 1 point, fewer FLOPs, lower latency)
    python bench/shrink.py prune      # fashion-convnet unstructured to 80%, fine-tuned (bar: loses <= 1 point)
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
from powertrain.shrink import export, load_model, prune, prune_channels, quantize
from powertrain.shrink.infer_cost import inference_cost
from powertrain.measure import forward_flops
from powertrain.run.rundir import RunDir
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


TABLE = {"parent": "fashion-convnet", "channels": 0.5, "epochs": 2, "quantize": ["ao-weight", "ao-dynamic", "static"],
         "alpha": 0.5, "temperature": 4.0, "repeats": 200}  # the student gets the pruned model's widths


def derived(root: Path, name: str, make) -> Path:
    """ROOT/NAME if it holds a finished run, else what `make(path)` writes there (after clearing it)."""
    path = root / name
    if (path / "eval.json").is_file():
        return path
    print(f"== {name}", flush=True)
    return Path(make(child_dir(root, name)))


def distilled(src: Path, root: Path, cfg: dict, widths: dict) -> Path:
    """A student of the teacher `src` with `widths`, trained from scratch for the recipe's epochs."""
    raw = powertrain.load_recipe(src / "recipe.yaml").to_dict()
    raw["model"].update(widths)
    raw["train"]["distill"] = {"teacher": str(src.resolve()), "alpha": cfg["alpha"], "temperature": cfg["temperature"]}
    name = f"{cfg['parent']}-student-" + "-".join(str(w) for v in widths.values() for w in v)
    return derived(root, name, lambda out: powertrain.train(raw, out=out, callbacks=[]).dir)


def weights_bytes(path: Path) -> int:
    f = RunDir(path).final_weights()
    return (f / "model.safetensors" if f.is_dir() else f).stat().st_size


def run_table(root: Path, given: dict) -> None:
    cfg = TABLE
    src = parent(cfg["parent"], root, given)
    pruned = derived(root, f"{cfg['parent']}-channels{round(cfg['channels'] * 100)}",
                     lambda out: prune_channels(src, channels=cfg["channels"], epochs=cfg["epochs"], out=out, callbacks=[]))
    runs = {"parent (fp32)": src, f"pruned: {cfg['channels']:.0%} of the channels, structured": pruned}
    for mode in cfg["quantize"]:
        runs[f"int8 {mode}" + (" (eager torch.ao, deprecated)" if mode == "static" else " (torchao)")] = derived(
            root, f"{cfg['parent']}-int8-{mode}", lambda out, m=mode: quantize(src, mode=m, out=out))
    widths = read(runs[list(runs)[1]], "derived.json")["report"]["widths"]["pruned"]
    runs["distilled student of the pruned widths"] = distilled(src, root, cfg, widths)
    load = machine()
    loaded = {label: load_model(path) for label, path in runs.items()}
    _, _, trainer = loaded["parent (fp32)"]
    sample = next(trainer.data.test.batches(torch.arange(1), 1))[0].cpu()
    parent_flops = forward_flops(loaded["parent (fp32)"][0].cpu(), sample).total
    cost = inference_cost({label: m.cpu() for label, (m, _, _) in loaded.items()}, sample, repeats=cfg["repeats"])
    lines = ["| model | params | FLOPs / sample | bytes on disk | latency batch 1 (ms) | latency batch 64 (ms / batch) | "
             "J / inference sample (estimated) | test accuracy | vs parent |", "|---|---|---|---|---|---|---|---|---|"]
    base = cost["parent (fp32)"]
    acc0 = read(src, "eval.json")["test"]["accuracy"]
    verdicts = []
    for label, path in runs.items():
        model, c, bill = loaded[label][0], cost[label], read(path, "bill.json")
        int8 = label.startswith("int8")
        flops = parent_flops if int8 else forward_flops(model, sample).total
        acc = read(path, "eval.json")["test"]["accuracy"]
        lat = c["latency_s"]
        speed = [f"{base['latency_s'][b] / lat[b]:.2f}x" for b in ("1", "64")]
        slow = [f"batch {b}" for b in ("1", "64") if lat[b] > base["latency_s"][b]]
        if slow and label != "parent (fp32)":
            verdicts.append(f"{label} is SLOWER than the fp32 parent on this CPU at {' and '.join(slow)}")
        note = "-" if label == "parent (fp32)" else (f"{(acc - acc0) * 100:+.2f} points, speed {speed[0]} / {speed[1]}"
                                                    + (" (**slower**)" if slow else ""))
        lines.append(f"| {label} | {bill['params']:,} | {flops / 1e6:.2f} M{' (int8)' if int8 else ''} | "
                     f"{weights_bytes(path):,} | {lat['1'] * 1e3:.3f} | {lat['64'] * 1e3:.2f} | {c['j_per_sample']:.3g} | "
                     f"{acc:.4f} | {note} |")
    pruned_label = list(runs)[1]
    p_acc = read(runs[pruned_label], "eval.json")["test"]["accuracy"]
    p = cost[pruned_label]["latency_s"]
    bar = ((acc0 - p_acc) * 100 <= 1 and all(p[b] < base["latency_s"][b] for b in ("1", "64")))
    rep = read(runs[pruned_label], "derived.json")["report"]
    body = (f"Command: `python bench/shrink.py table` ({load}).\n"
            f"Parent: the full `{cfg['parent']}` recipe. Pruned: `powertrain prune PARENT --channels {cfg['channels']} "
            f"--epochs {cfg['epochs']}` (Torch-Pruning, group L2 norm; widths {rep['widths']['parent']} -> "
            f"{rep['widths']['pruned']}; {rep['finetune_steps']} fine-tuning steps). int8: `powertrain quantize PARENT "
            f"--mode MODE` (torchao quantizes the Linear layers only; `static` is the eager int8 path that also runs "
            f"the convolutions in int8). Distilled: the student has the pruned model's widths, trained from scratch "
            f"for the recipe's epochs on the parent's soft targets (alpha {cfg['alpha']}, T {cfg['temperature']:g}).\n"
            f"All models measured in one process, taking turns in 10 blocks: latency is the median of {cfg['repeats']} "
            f"forward passes per batch size on 1 thread; J per inference sample is the Meter's energy over the batch-64 "
            f"passes over their samples, **estimated** (this machine has no energy counter: "
            f"`{base['energy_method']}`). FLOPs of the int8 models: the same multiply-adds as the parent, in int8.\n\n"
            + "\n".join(lines) + "\n\n"
            f"Bar (structured pruning: fewer FLOPs and lower latency at both batch sizes, <= 1 point lost): "
            f"{'**met**' if bar else '**not met**'}." + ("\n\n" + "; ".join(verdicts) + "." if verdicts else ""))
    print(body)
    write_section("Shrinking fashion-convnet, one table (bench/shrink.py table)", body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["table", "prune", "quantize", "export", "all"])
    p.add_argument("--root", default="/tmp/powertrain-shrink", help="where parents and derived runs go")
    p.add_argument("--parent", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="use this run as the parent of recipe NAME (repeatable)")
    p.add_argument("--channels", type=float, default=TABLE["channels"], help="table: fraction of channels pruned")
    args = p.parse_args()
    TABLE["channels"] = args.channels
    given = dict(item.split("=", 1) for item in args.parent)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    for what, fn in (("table", run_table), ("prune", run_prune), ("quantize", run_quantize), ("export", run_export)):
        if args.what in (what, "all"):
            fn(root, given)


if __name__ == "__main__":
    main()
