"""Transfer learning: initialise a model from another run's weights, matched by name and shape.

`model.init_from: RUN_DIR` in a recipe loads, into the freshly built model, every tensor of the run's
final weights (best.safetensors under early stopping with restore_best, else the newest checkpoint)
whose name and shape match; the rest stays at its initialisation. The report says what happened:

    matched         loaded (parameters and buffers such as BatchNorm statistics)
    shape_mismatch  in both, different shapes: left at init (a head for another number of classes)
    missing         in the model, not in the source: left at init
    unexpected      in the source, not in the model: ignored
    excluded        matched `model.init_exclude` globs: left at init (a new head for the same classes)

It is printed when the run starts and kept in the run directory as init_from.json. The parameters
loaded are the model's `pretrained_names`, the backbone that `train.backbone_lr_mult` slows down;
`train.freeze` (globs over parameter names) stops updates altogether.

>>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 5))
>>> src = {"0.weight": torch.ones(3, 4), "0.bias": torch.zeros(3), "2.weight": torch.ones(2, 3), "extra": torch.ones(1)}
>>> r = load_partial(net, src)
>>> r["matched"], r["missing"], r["unexpected"], [m["name"] for m in r["shape_mismatch"]]
(['0.weight', '0.bias'], ['2.bias'], ['extra'], ['2.weight'])
>>> sorted(net.pretrained_names)
['0.bias', '0.weight']
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..run import checkpoint
from ..errors import RecipeError, RunDirError
from ..run.rundir import RunDir

def final_weights_file(run_dir: str | Path, what: str = "model.init_from") -> Path:
    """The safetensors file holding a run's final weights (those its metrics were reported with)."""
    try:
        run = RunDir.open(run_dir)
        if run.kind == "quantized":
            raise RunDirError(f"'{run.path}' is a quantized (int8) run; use its parent's fp32 weights instead")
        weights = run.final_weights()
    except RunDirError as e:
        raise RunDirError(f"{what}: {e}") from None
    if weights.is_dir() and checkpoint.is_sharded(weights):
        raise RunDirError(f"{what}: '{weights}' is a sharded (FSDP) checkpoint; write its full weights with "
                          f"`powertrain export {run.path} --format safetensors` and load those instead")
    return weights / "model.safetensors" if weights.is_dir() else weights


def _tied(model: nn.Module) -> dict[str, list[str]]:
    """name -> the other state-dict names of the same tensor (tied weights, e.g. GPT's lm_head and wte)."""
    by_id: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        by_id.setdefault(id(t), []).append(name)
    return {n: [m for m in names if m != n] for names in by_id.values() for n in names}


def load_partial(model: nn.Module, source: dict[str, torch.Tensor], exclude: list[str] = ()) -> dict:
    """Copy every tensor of `source` whose name and shape match into `model` (in place) and return
    the report {"matched", "missing", "unexpected", "shape_mismatch", "excluded", "loaded_values",
    "model_values"}; sets `model.pretrained_names` (the parameters loaded, for train.backbone_lr_mult)."""
    own = model.state_dict()
    tied = _tied(model)
    matched, missing, mismatch, excluded = [], [], [], []
    with torch.no_grad():
        for name, t in own.items():
            if any(fnmatchcase(name, pat) for pat in exclude):
                excluded.append(name)
            elif name not in source:
                missing.append(name)
            elif tuple(source[name].shape) != tuple(t.shape):
                mismatch.append({"name": name, "model": list(t.shape), "source": list(source[name].shape)})
            else:
                t.copy_(source[name].to(t.device))
                matched.append(name)
    done = set(matched)  # a tied tensor saved under its other name is loaded all the same
    for name in list(missing):
        if any(alias in done for alias in tied.get(name, ())):
            missing.remove(name)
            matched.append(name)
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    model.pretrained_names = frozenset(n for n in matched if n in params)
    return {"matched": matched, "missing": missing, "unexpected": [k for k in source if k not in own],
            "shape_mismatch": mismatch, "excluded": excluded,
            "loaded_values": sum(own[n].numel() for n in matched if n in params),
            "model_values": sum(p.numel() for p in model.parameters())}


def init_from(model: nn.Module, run_dir: str | Path, exclude: list[str] = ()) -> dict:
    """Load a run's matching final weights into `model`; returns the report with "source" and "file".

    >>> report = init_from(model, "runs/fashion-convnet", exclude=["9.*"])  # doctest: +SKIP
    """
    file = final_weights_file(run_dir)
    from safetensors.torch import load_file

    try:
        source = load_file(str(file))
    except Exception as e:  # safetensors raises several types for a damaged file
        raise RunDirError(f"model.init_from: '{file}' is unreadable ({type(e).__name__}); pass another run") from None
    report = load_partial(model, source, exclude)
    if not report["matched"]:
        raise RecipeError(f"model.init_from: no tensor of '{file}' matches this model by name and shape "
                          f"(its names are like {', '.join(list(source)[:4])}); was it trained with another model?")
    return {"source": str(Path(run_dir).resolve()), "file": str(file.resolve()), **report}


def apply(model: nn.Module, section, run_dir: Optional[Path], announce: bool = True) -> Optional[dict]:
    """`model.init_from` of a recipe's model section: in a new run, load and write init_from.json (and
    print the report); in a run that has the report (resume, eval), only mark the backbone again, as
    the checkpoint will hold the weights. None when the section has no init_from."""
    if not section.init_from:
        return None
    run = RunDir(run_dir) if run_dir is not None else None
    saved = run.read("init_report", required=False) if run is not None else None
    if saved is not None:
        report = saved
        model.pretrained_names = frozenset(report["pretrained"])
        return report
    report = init_from(model, section.init_from, section.init_exclude)
    report["pretrained"] = sorted(model.pretrained_names)
    if run is not None:
        run.write("init_report", report)
    if announce:
        print(format_report(report), flush=True)
    return report


def format_report(report: dict, limit: int = 8) -> str:
    """The partial-load report as printed when a run starts."""
    def names(items):
        items = [i if isinstance(i, str) else f"{i['name']} (model {i['model']} vs source {i['source']})" for i in items]
        return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")

    total = len(report["matched"]) + len(report["missing"]) + len(report["shape_mismatch"]) + len(report["excluded"])
    lines = [f"init_from {report.get('source', '')}: {len(report['matched'])} of {total} tensors loaded "
             f"({report['loaded_values']:,} of {report['model_values']:,} parameter values)"]
    for key, label in (("shape_mismatch", "shape mismatch, left at init"), ("excluded", "excluded, left at init"),
                       ("missing", "missing from the source, left at init"),
                       ("unexpected", "unexpected (in the source only), ignored")):
        if report[key]:
            lines.append(f"  {label}: {names(report[key])}")
    return "\n".join(lines)
