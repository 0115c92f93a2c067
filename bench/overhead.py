"""Engine overhead: powertrain's Trainer against a plain PyTorch loop written here, same model, data
order, seed and batch size, on CPU. Runs are interleaved (plain, powertrain, plain, ...) and the
best steps/s of each is kept, so machine noise hits both alike.

    python bench/overhead.py            # writes the table into docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import io
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import powertrain
from powertrain import Callback, Trainer, data, models
from powertrain.train.callbacks import Progress

from docs_section import write_section



def torch_optimizer(params, tc):
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    assert tc.optimizer == "adam"
    return torch.optim.Adam(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)


def plain(recipe, bundle, total_steps):
    """The loop a PyTorch user would write. Returns (steps/s, final loss, model)."""
    tc, seed = recipe.train, recipe.run.seed
    torch.manual_seed(seed)
    model = models.build(recipe.model.model_dump(), bundle.meta)
    opt = torch_optimizer(model.parameters(), tc)
    sched = None
    if tc.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, tc.lr, total_steps=total_steps, pct_start=tc.pct_start,
                                                    cycle_momentum=False)
    x, y = bundle.train.tensors
    model.train()
    step, loss_value, t0 = 0, math.nan, time.perf_counter()
    while step < total_steps:
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 1_000_003 + step // math.ceil(len(x) / tc.batch_size)))
        for i in range(0, len(x), tc.batch_size):
            idx = order[i:i + tc.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            if sched:
                sched.step()
            loss_value = loss.item()
            step += 1
            if step == total_steps:
                break
    return total_steps / (time.perf_counter() - t0), loss_value, model


class StepClock(Callback):
    def on_fit_start(self, trainer):
        self.t0 = time.perf_counter()

    def on_step_end(self, trainer, loss):
        self.t1, self.loss = time.perf_counter(), loss


def ours(recipe, bundle, total_steps, tmp):
    """powertrain as a user runs it: progress lines, metrics.jsonl, final checkpoint (eval not timed)."""
    torch.manual_seed(recipe.run.seed)
    model = models.build(recipe.model.model_dump(), bundle.meta)
    clock = StepClock()
    cfg = recipe.train.model_copy(update={"eval_every_epochs": 10**6, "max_steps": total_steps})
    Trainer(model, bundle, cfg, run_dir=tmp, callbacks=[clock, Progress(io.StringIO())], seed=recipe.run.seed).fit()
    return total_steps / (clock.t1 - clock.t0), clock.loss, model


def bench(name: str, repeats: int, tmp_root: Path) -> dict:
    recipe = powertrain.load_recipe(name, ["train.compile=false", "train.precision=fp32"])
    bundle = data.build(recipe.data.model_dump(), seed=recipe.run.seed)
    total = recipe.train.epochs * math.ceil(len(bundle.train) / recipe.train.batch_size)
    best = {"plain": 0.0, "powertrain": 0.0}
    for r in range(repeats):
        sp, lp, mp = plain(recipe, bundle, total)
        so, lo, mo = ours(recipe, bundle, total, tmp_root / f"{name}-{r}")
        best["plain"], best["powertrain"] = max(best["plain"], sp), max(best["powertrain"], so)
    same_weights = all(torch.equal(a, b) for a, b in zip(mp.state_dict().values(), mo.state_dict().values()))
    return {"recipe": name, "steps": total, "plain_steps_s": best["plain"], "ours_steps_s": best["powertrain"],
            "ratio": best["powertrain"] / best["plain"], "loss_diff": abs(lp - lo), "same_weights": same_weights}


def write_table(rows: list[dict]) -> str:
    lines = ["| recipe | steps | plain loop steps/s | powertrain steps/s | ratio (bar >= 0.95) | final-loss diff (bar <= 1e-6) | identical weights |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['steps']} | {r['plain_steps_s']:.1f} | {r['ours_steps_s']:.1f} | "
                     f"{r['ratio']:.3f} | {r['loss_diff']:.1e} | {r['same_weights']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recipes", nargs="+", default=["digits-mlp", "mnist1d-cnn"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench(n, args.repeats, Path(tmp)) for n in args.recipes]
    table = write_table(rows)
    print(table)
    if not args.no_write:
        write_section("Engine overhead (bench/overhead.py)",
                      f"CPU: {torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
                      f"best of {args.repeats} interleaved runs each; compile off, fp32.\n"
                      f"Command: `python bench/overhead.py`\n\n{table}")
    sys.exit(0 if all(r["ratio"] >= 0.95 and r["loss_diff"] <= 1e-6 for r in rows) else 1)


if __name__ == "__main__":
    main()
