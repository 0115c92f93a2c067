"""Structured pruning: whole channels (Torch-Pruning) or attention heads (heads.py) of a trained run
removed, into a derived run whose model is really smaller (fewer weights on disk, fewer FLOPs on the
bill, faster passes).

Torch-Pruning traces the model's dependency graph, so that a Conv filter goes with its bias, the
BatchNorm channel after it, the input channel of the next Conv and, across a Flatten, the Linear
columns it fed. Each group is ranked by the L2 norm of its weights (`GroupMagnitudeImportance`), and
the same fraction `channels` of every hidden Conv filter set and Linear layer is removed; the output
layer keeps its width.

**How the pruned run loads.** The models this is offered for say their pruned shape in the recipe:
`cnn` and `mlp` list each layer's width (`model.conv`, `model.dense`, `model.hidden`); `transformer`
and `gpt` keep the same number of heads in every layer (`model.n_head`, with `model.head_dim`, the
heads' unchanged width). The child's recipe.yaml holds the pruned shape, so the child is an ordinary
run of a smaller model: `powertrain eval`, `predict`, `report`, `export` and `distill --teacher` build
it from its recipe and load its checkpoint like any other run, and the pruning checks that the
recipe rebuilds exactly the pruned model (strict load). Another model (resnet's stages tie channels
across blocks) is refused in one line.

>>> from powertrain.shrink.structured import prune_channels, prune_heads
>>> child = prune_channels("runs/fashion-convnet", channels=0.5, epochs=2)  # doctest: +SKIP
>>> child = prune_heads("runs/mnist1d-transformer", heads=0.5, epochs=2)  # doctest: +SKIP
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import RecipeError, need_extra
from ..models import count_params
from ..recipe import Recipe, parse_recipe
from .derived import (child_recipe, create_child, evaluate_splits, finish_child, floats, load_final_weights,
                      make_trainer, open_trained, parent_metrics, update_derived)
from .infer_cost import fp32_bytes, inference_cost, slower

OFFERED = {"channels": ("cnn", "mlp"), "heads": ("transformer", "gpt")}


def hidden_widths(model: nn.Module, model_name: str) -> dict:
    """The recipe keys that give each hidden layer's width, read from a (pruned) model:
    cnn: {"conv": [...], "dense": [...]}, mlp: {"hidden": [...]}. The last Linear is the output."""
    linears = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)][:-1]
    if model_name == "cnn":
        return {"conv": [m.out_channels for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)],
                "dense": linears}
    return {"hidden": linears}


def remove_channels(model: nn.Module, example: torch.Tensor, channels: float) -> nn.Module:
    """Remove the fraction `channels` of the channels of every hidden Conv and Linear layer of `model`
    (in place), the lowest L2-norm groups first; the output layer keeps its width. Returns `model`.

    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> remove_channels(net, torch.zeros(1, 4), 0.5)[0].out_features
    4
    """
    tp = need_extra("torch_pruning", "shrink", "structured pruning (--channels)")
    output = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    was_training = model.training
    model.eval()
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=channels, ignored_layers=[output])
    pruner.step()
    model.train(was_training)
    return model


def _settings(what: str, amount, epochs, lr, steps) -> dict:
    from .prune import _settings as unstructured

    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 < amount < 1:
        raise RecipeError(f"{what} (--{what}): expected the fraction of each layer's {what} to remove, "
                          f"0 < {what} < 1 (e.g. 0.5), got {amount!r}")
    s = unstructured(0.5, 1, epochs, lr, steps)  # the same checks of the fine-tuning settings
    return {"structured": what, what: float(amount), "epochs": s["epochs"], "steps": s["steps"], "lr": s["lr"],
            "rounds": 1}


def _widths(what: str, model: nn.Module, model_name: str) -> dict:
    from .heads import head_widths

    return hidden_widths(model, model_name) if what == "channels" else head_widths(model)


def _shrink(what: str, model: nn.Module, sample: torch.Tensor, amount: float, model_name: str) -> dict:
    """Prune `model` in place; returns the recipe keys that describe it now."""
    if what == "heads":
        from .heads import remove_heads

        return remove_heads(model, amount)
    return hidden_widths(remove_channels(model, sample, amount), model_name)


def pruned_recipe(base: Recipe, widths: dict) -> Recipe:
    raw = base.to_dict()
    raw["model"].update(widths)
    return parse_recipe(raw)


def prune_channels(run_dir: str | Path, channels: float = 0.5, epochs: int = 2, lr: Optional[float] = None,
                   steps: Optional[int] = None, out: Optional[str | Path] = None, callbacks=None,
                   repeats: int = 100, warmup: int = 10, threads: int = 1, checkpoint: Optional[str] = None) -> Path:
    """Remove the fraction `channels` of every hidden layer's channels of a trained `cnn` or `mlp` run,
    fine-tune (`epochs` or `steps`, at `lr`, default a tenth of the run's, cosine to 0) and write a
    derived run directory; returns its path. derived.json's report: widths, parameters, FLOPs per
    sample, bytes on disk, latency at batch 1 and 64 and J per inference sample (parent against
    pruned, measured side by side after fine-tuning), and the metrics of the parent, just after
    pruning and after fine-tuning.

    >>> child = prune_channels("runs/digits-mlp", channels=0.5, epochs=1)  # doctest: +SKIP
    """
    return _prune(run_dir, "channels", channels, epochs, lr, steps, out, callbacks, repeats, warmup, threads,
                  checkpoint)


def prune_heads(run_dir: str | Path, heads: float = 0.5, epochs: int = 2, lr: Optional[float] = None,
                steps: Optional[int] = None, out: Optional[str | Path] = None, callbacks=None,
                repeats: int = 100, warmup: int = 10, threads: int = 1, checkpoint: Optional[str] = None) -> Path:
    """As `prune_channels`, removing the fraction `heads` of the attention heads of every layer of a
    trained `transformer` or `gpt` run (heads.py); the child's recipe holds `n_head` and `head_dim`.

    >>> child = prune_heads("runs/mnist1d-transformer", heads=0.5, epochs=1)  # doctest: +SKIP
    """
    return _prune(run_dir, "heads", heads, epochs, lr, steps, out, callbacks, repeats, warmup, threads, checkpoint)


def _prune(run_dir, what: str, amount: float, epochs, lr, steps, out, callbacks, repeats, warmup, threads,
           checkpoint=None) -> Path:
    s = _settings(what, amount, epochs, lr, steps)
    if what == "channels":
        need_extra("torch_pruning", "shrink", "structured pruning (--channels)")
    parent, recipe = open_trained(run_dir, "prune")
    if recipe.model.name not in OFFERED[what]:
        other = {"channels": "heads", "heads": "channels"}[what]
        raise RecipeError(f"--{what}: structured pruning of {what} is offered for models {', '.join(OFFERED[what])} "
                          f"(--{other}: {', '.join(OFFERED[other])}), whose recipe can say the pruned widths, not model "
                          f"'{recipe.model.name}'; use --sparsity (unstructured: zeros, which save nothing until a "
                          f"sparse kernel runs them)")
    from .prune import finetune_recipe

    base = child_recipe(recipe, parent)
    source = make_trainer(base, None, callbacks=[])  # the parent's model and data; writes nothing
    s["parent_weights"] = load_final_weights(parent, source.model, source.device, checkpoint)
    sample = next(source.data.test.batches(torch.arange(1), 1))[0] if source.data.test is not None else \
        next(source.data.val.batches(torch.arange(1), 1))[0]
    parent_model = source.model.eval()
    pruned = copy.deepcopy(parent_model)
    widths = _shrink(what, pruned, sample, amount, recipe.model.name)
    small = pruned_recipe(base, widths)
    tune = s["epochs"] > 0 or s["steps"] is not None
    tuned = finetune_recipe(small, {**s, "rounds": 1}) if tune else small
    trainer = make_trainer(tuned, None, callbacks=callbacks)
    trainer.model.load_state_dict(pruned.state_dict())  # strict: the recipe rebuilds exactly the pruned model
    split = "test" if trainer.data.test is not None else "val"
    after_prune = floats(trainer.evaluate(split))
    child = create_child(parent, tuned, out, f"{what}{round(amount * 100)}", "prune", s)
    trainer.run = child
    if tune:
        trainer.finish_after_fit = False  # evaluated and billed below, with the derived run's note
        trainer.fit()
    trainer.save_checkpoint()
    results = evaluate_splits(trainer)
    small_model = trainer.model.eval()
    cost = inference_cost({"parent": parent_model.cpu(), "pruned": copy.deepcopy(small_model).cpu()},
                          sample.cpu(), repeats, warmup, threads)
    from ..measure import forward_flops

    x1 = sample[:1].cpu()
    figures = {name: {"params": count_params(m), "flops_per_sample": forward_flops(m.cpu(), x1).total,
                      "bytes": fp32_bytes(m, child.checkpoints), **cost[name]}
               for name, m in (("parent", parent_model), ("pruned", copy.deepcopy(small_model)))}
    report = {
        "structured": what, what: amount,
        "importance": "group L2 norm (Torch-Pruning)" if what == "channels" else "L2 norm of each head's weights",
        "widths": {"parent": _widths(what, parent_model, recipe.model.name), "pruned": widths},
        "figures": figures, "slower": slower(cost, "parent", "pruned"),
        "latency_setup": {"batches": [1, 64], "warmup": warmup, "repeats": repeats, "statistic": "median",
                          "threads": threads, "device": "cpu", "interleaved_blocks": min(10, repeats)},
        "metrics": {"parent": parent_metrics(parent), "after_prune": {split: after_prune},
                    "final": {k: floats(v) for k, v in results.items()}},
        "finetune_steps": trainer.step,
    }
    update_derived(child, report=report)
    finish_child(child, trainer, results, "prune")
    return child.path


def format_report(report: dict) -> str:
    """Parent against pruned: widths, parameters, FLOPs, bytes, latency, energy and metrics."""
    f, w = report["figures"], report["widths"]
    p, q = f["parent"], f["pruned"]
    rows = [("widths", ", ".join(f"{k} {v}" for k, v in w["parent"].items()),
             ", ".join(f"{k} {v}" for k, v in w["pruned"].items()), "")]
    for label, key in (("parameters", "params"), ("FLOPs / sample", "flops_per_sample"), ("bytes on disk", "bytes")):
        rows.append((label, f"{p[key]:,}", f"{q[key]:,}", f"{p[key] / q[key]:.2f}x smaller"))
    for b in p["latency_s"]:
        rows.append((f"latency batch {b} (ms)", f"{p['latency_s'][b] * 1e3:.3f}", f"{q['latency_s'][b] * 1e3:.3f}",
                     f"{p['latency_s'][b] / q['latency_s'][b]:.2f}x faster"))
    if p.get("j_per_sample") and q.get("j_per_sample"):
        rows.append(("J / inference sample", f"{p['j_per_sample']:.3g}", f"{q['j_per_sample']:.3g}",
                     f"[{q['energy_method']}]"))
    m = report["metrics"]
    split = next(iter(m["after_prune"]), "test")
    for k, v in m["final"].get(split, {}).items():
        if k in m["parent"].get(split, {}):
            rows.append((f"{split} {k}", f"{m['parent'][split][k]:.4f}", f"{v:.4f}",
                         f"{m['after_prune'][split].get(k, float('nan')):.4f} before fine-tuning"))
    lines = [f"{'':<24} {'parent':>28} {'pruned':>28}"] + [f"{a:<24} {b:>28} {c:>28}  {d}" for a, b, c, d in rows]
    s = report["latency_setup"]
    what = report.get("structured", "channels")
    lines.append(f"{report[what]:.0%} of each layer's {what} removed; {report['finetune_steps']} "
                 f"fine-tuning steps; latency: median of {s['repeats']} passes after {s['warmup']} warm-up, "
                 f"{s['threads']} thread(s), CPU")
    if report["slower"]:
        lines.append("the pruned model is SLOWER on this CPU at " + "; ".join(report["slower"]))
    return "\n".join(lines)
