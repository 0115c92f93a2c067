"""Global magnitude pruning of a trained run, through `torch.nn.utils.prune`, into a derived run.

The weights of every Linear and Conv layer (biases, norms, embeddings and weights shared with
another layer, such as GPT's tied `lm_head`, stay dense) are ranked together by |w|, and the smallest
are masked to zero until exactly round(sparsity x their count) are zero. In one shot (`rounds=1`) or
iteratively: round i prunes to 1 - (1 - sparsity)^(i / rounds), i.e. the same fraction of the
remaining weights each round, and `epochs` of fine-tuning follow each round (masked weights stay
zero: the mask is applied in every forward). `prune.remove` then makes the masks permanent, so the
saved checkpoint holds plain `weight` tensors with zeros, loadable by the unchanged recipe.

Unstructured pruning saves nothing until a sparse kernel is used: dense kernels do the same work on
zeros, and the zeros are stored, so the checkpoint is as large and a forward pass as costly (the
report's `saves` says so). It shows how much of the model the accuracy needs; structured.py removes
whole channels, which does shrink the model.

>>> from powertrain.shrink import prune
>>> child = prune("runs/fashion-convnet", sparsity=0.8, epochs=1)  # doctest: +SKIP
>>> RunDir(child).read("derived")["report"]["sparsity"]  # doctest: +SKIP
0.8
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch.nn.utils.prune as tprune
from torch import nn

from ..train.callbacks import Callback
from ..train.engine import Trainer
from ..errors import RecipeError, RunDirError
from ..recipe import Recipe, parse_recipe
from .derived import (child_recipe, create_child, evaluate_splits, finish_child, floats, load_final_weights,
                      make_trainer, open_trained, parent_metrics, update_derived)

PRUNABLE = (nn.Linear, nn.modules.conv._ConvNd)


def prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the layers whose `weight` global magnitude pruning ranks: Linear and Conv,
    but not one whose weight another module shares (tied embeddings)."""
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    out = []
    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE):
            w = m.weight_orig if hasattr(m, "weight_orig") else m.weight
            if uses.get(id(w), 0) == 1:
                out.append((name, m))
    return out


def _mask_zeros(m: nn.Module) -> int:
    return int((m.weight_mask == 0).sum()) if hasattr(m, "weight_mask") else 0


def prune_to(layers: list[tuple[str, nn.Module]], sparsity: float) -> int:
    """Mask the globally smallest |weights| of `layers` until round(sparsity x total) are masked
    (masks only grow: weights masked before stay masked). Returns the number masked."""
    total = sum(m.weight.numel() for _, m in layers)
    want = round(sparsity * total)
    extra = want - sum(_mask_zeros(m) for _, m in layers)
    if extra > 0:
        tprune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=tprune.L1Unstructured,
                                   amount=extra)
    return want


def remove_masks(layers: list[tuple[str, nn.Module]]) -> None:
    """`prune.remove`: the masked weight becomes the plain parameter `weight` (zeros where masked)."""
    for _, m in layers:
        if tprune.is_pruned(m) and hasattr(m, "weight_mask"):
            tprune.remove(m, "weight")


def sparsity_report(layers: list[tuple[str, nn.Module]]) -> dict:
    """Zeros per layer and overall, counted in the weights themselves."""
    rows, zeros, total = [], 0, 0
    for name, m in layers:
        w = m.weight.detach()
        z, n = int((w == 0).sum()), w.numel()
        rows.append({"name": f"{name}.weight" if name else "weight", "shape": list(w.shape), "params": n,
                     "zeros": z, "sparsity": z / n})
        zeros, total = zeros + z, total + n
    return {"sparsity": zeros / total if total else 0.0, "zeros": zeros, "prunable_params": total, "layers": rows}


def schedule(sparsity: float, rounds: int) -> list[float]:
    """Target sparsity after each round: the same fraction of the remaining weights each time."""
    return [1 - (1 - sparsity) ** (i / rounds) for i in range(1, rounds + 1)]


class MaskedTrainer(Trainer):
    """Holds checkpoints while pruning masks are attached (they would save `weight_orig` and
    `weight_mask`, which the recipe's model cannot load); `prune()` saves one after `prune.remove`."""

    def save_checkpoint(self):
        if any(hasattr(m, "weight_mask") for m in self.model.modules()):
            return None
        return super().save_checkpoint()


class PruneRounds(Callback):
    """Prunes to the next round's sparsity every `steps_per_round` fine-tuning steps."""

    def __init__(self, layers, targets: list[float], steps_per_round: int):
        self.layers, self.targets, self.steps_per_round = layers, targets, steps_per_round
        self.done = 1  # round 1 is pruned before fine-tuning starts
        self.log: list[dict] = []

    def on_step_end(self, trainer, loss: float) -> None:
        if trainer.step % self.steps_per_round == 0 and self.done < len(self.targets):
            prune_to(self.layers, self.targets[self.done])
            self.done += 1
            self.log.append({"round": self.done, "step": trainer.step, "sparsity": self.targets[self.done - 1]})


def _settings(sparsity, rounds, epochs, lr, steps) -> dict:
    def bad(name, flag, expected, got):
        return RecipeError(f"{name} ({flag}): expected {expected}, got {got!r}")

    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 < sparsity < 1:
        raise bad("sparsity", "--sparsity", "a fraction of weights to zero, 0 < sparsity < 1 (e.g. 0.8)", sparsity)
    for name, flag, v, lo in (("rounds", "--rounds", rounds, 1), ("epochs", "--epochs", epochs, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise bad(name, flag, f"a whole number >= {lo}", v)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise bad("steps", "--steps", "a whole number >= 1 of fine-tuning steps per round", steps)
    if lr is not None and (not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0):
        raise bad("lr", "--lr", "a learning rate > 0", lr)
    return {"sparsity": float(sparsity), "rounds": rounds, "epochs": epochs, "steps": steps, "lr": lr}


def finetune_recipe(recipe: Recipe, s: dict) -> Recipe:
    """The parent's recipe with the fine-tuning schedule: `rounds x epochs` epochs (or `rounds x steps`
    steps) at `lr` (default: a tenth of the parent's), cosine-decayed to 0, no early stopping."""
    raw = recipe.to_dict()
    raw["train"].update({"epochs": s["rounds"] * max(s["epochs"], 1), "lr": s["lr"] or recipe.train.lr / 10,
                         "max_steps": s["rounds"] * s["steps"] if s["steps"] else None, "schedule": "cosine",
                         "warmup_steps": 0, "min_lr": 0.0, "early_stop": None})
    return parse_recipe(raw)


def prune(run_dir: str | Path, sparsity: float = 0.8, rounds: int = 1, epochs: int = 1, lr: Optional[float] = None,
          steps: Optional[int] = None, out: Optional[str | Path] = None, callbacks=None,
          checkpoint: Optional[str] = None) -> Path:
    """Prune a trained run's Linear and Conv weights to `sparsity` (global magnitude), fine-tune, and
    write a derived run directory; returns its path. `epochs`/`steps`: fine-tuning per round (0 epochs:
    none); `lr`: default a tenth of the parent's; `checkpoint`: the parent's checkpoint to start from instead of
    its final weights. derived.json's report holds the sparsity per layer and the metrics of the parent, of
    the model just after pruning, and after fine-tuning; its settings the parent's weights used (and step).

    >>> child = prune("runs/digits-mlp", sparsity=0.9, rounds=3, epochs=2)  # doctest: +SKIP
    """
    s = _settings(sparsity, rounds, epochs, lr, steps)
    parent, recipe = open_trained(run_dir, "prune")
    tune = s["epochs"] > 0 or s["steps"] is not None
    base = child_recipe(recipe, parent)
    tuned = finetune_recipe(base, s) if tune else base
    trainer = make_trainer(tuned, None, cls=MaskedTrainer, callbacks=callbacks)
    s["parent_weights"] = load_final_weights(parent, trainer.model, trainer.device, checkpoint)
    layers = prunable(trainer.model)
    if not layers:
        raise RunDirError(f"'{parent}': model '{recipe.model.name}' has no Linear or Conv weights to prune")
    child = create_child(parent, tuned, out, f"prune{round(s['sparsity'] * 100)}", "prune", s)
    trainer.run = child  # from here on the trainer logs and checkpoints there
    trainer.finish_after_fit = False  # evaluated below, once the masks are removed
    targets = schedule(s["sparsity"], s["rounds"]) if tune else [s["sparsity"]]
    prune_to(layers, targets[0])
    split = "test" if trainer.data.test is not None else "val"  # a text corpus has no test split
    after_prune = floats(trainer.evaluate(split)) if getattr(trainer.data, split) is not None else {}
    rounds = PruneRounds(layers, targets, max(1, trainer.total_steps // len(targets)))
    if tune:
        trainer.callbacks.append(rounds)
        trainer.fit()
    remove_masks(layers)
    trainer.save_checkpoint()
    results = evaluate_splits(trainer)
    report = {**sparsity_report(layers), "target_sparsity": s["sparsity"],
              "rounds": [{"round": 1, "step": 0, "sparsity": targets[0]}] + rounds.log,
              "metrics": {"parent": parent_metrics(parent), "after_prune": {split: after_prune},
                          "final": {k: floats(v) for k, v in results.items()}},
              "finetune_steps": trainer.step,
              "saves": "nothing until a sparse kernel is used",
              "note": "unstructured: zeros are stored densely, so the checkpoint is as large and a forward pass as "
                      "costly as the parent's until a sparse kernel runs them; `--channels` (structured) removes "
                      "whole channels instead"}
    update_derived(child, report=report)
    finish_child(child, trainer, results, "prune")
    return child.path


def format_report(report: dict) -> str:
    """The per-layer sparsity table and the metrics before and after, as `powertrain prune` prints them."""
    lines = [f"{'layer':<28} {'shape':<16} {'params':>10} {'zeros':>10} {'sparsity':>9}"]
    for r in report["layers"]:
        lines.append(f"{r['name'][:28]:<28} {'x'.join(map(str, r['shape'])):<16} {r['params']:>10,} {r['zeros']:>10,} "
                     f"{r['sparsity']:>9.2%}")
    lines.append(f"{'all pruned layers':<28} {'':<16} {report['prunable_params']:>10,} {report['zeros']:>10,} "
                 f"{report['sparsity']:>9.2%}  (target {report['target_sparsity']:.2%})")
    m = report["metrics"]
    split = next(iter(m["after_prune"]), "test")
    for label, block in (("parent", m["parent"].get(split, {})), ("after pruning", m["after_prune"].get(split, {})),
                         (f"after {report['finetune_steps']} fine-tuning steps", m["final"].get(split, {}))):
        if block:
            lines.append(f"{split} {label}: " + "  ".join(f"{k} {v:.4f}" for k, v in block.items()))
    return "\n".join(lines)
