"""The "Answer the question" figures, written into docs/benchmarks.md and docs/img/:

    python bench/answer.py sweep   # mnist1d-cnn: ~20 trials over width, epochs and LR; target 0.94;
                                   # bar: <= 15 min of trials (with pruning), chosen trial <= 1/3 of the
                                   # default recipe's energy
    python bench/answer.py scale   # gpt-stdlib (block 64): 4 widths x 3 budgets; bar: the fit without the
                                   # largest width predicts its val loss within 5%
    python bench/answer.py all

Work goes to --root (default /tmp/powertrain-answer); a finished sweep or run there is reused.
Not a test: each part takes 15-30 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import torch
import yaml

from docs_section import write_section

DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
SPACE = {"model.conv": [[8, 16, 16], [16, 32, 32], [32, 64, 64]], "model.dense": [[32], [128]],
         "train.lr": {"log": [1.0e-3, 2.0e-2]}, "train.epochs": {"int": [3, 30]}}
GPT = ["data.block_size=64", "train.batch_size=32", "train.precision=fp32"]
SIZES, BUDGETS = [24, 32, 48, 64], [3e11, 1e12, 3e12]


def _where() -> str:
    return (f"CPU {torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
            f"load average {os.getloadavg()[0]:.1f} at the end")


def sweep(root: Path, trials: int) -> None:
    from powertrain.study.sweep import Sweep
    from powertrain.study.summary import format_summary, summarize

    out = root / "sweep-mnist1d"
    s = Sweep(out) if (out / "sweep.json").exists() else Sweep.create(
        "mnist1d-cnn", SPACE, out=out, trials=trials, target="accuracy>=0.94", baseline=True)
    t0 = time.perf_counter()
    s.run_baseline()
    t_base = time.perf_counter() - t0
    t0 = time.perf_counter()
    s.work()
    t_trials = time.perf_counter() - t0
    summary = summarize(s)
    text = format_summary(summary)
    print(text)
    shutil.copy(out / "front.png", DOCS_IMG / "sweep-front.png")
    c, b, e = summary["chosen"], summary["baseline"], summary["energy"]
    lines = [f"{_where()}. `python bench/answer.py sweep` = `powertrain sweep mnist1d-cnn --space SPACE.yaml "
             f"--trials {trials} --target accuracy>=0.94 --baseline` with SPACE.yaml:", "",
             "```yaml", yaml.safe_dump(SPACE, default_flow_style=None, sort_keys=False).strip(), "```", "",
             f"Wall time of this call: trials {t_trials / 60:.1f} min (bar <= 15 min), baseline {t_base:.0f} s "
             f"(if trained in this call). Trials: {', '.join(f'{k.lower()} {v}' for k, v in summary['states'].items())}; "
             f"pruning saved {e['saved_by_pruning_j']:.0f} J of {e['trials_j'] + e['saved_by_pruning_j']:.0f} J "
             f"({e['saved_note']}). Energy is estimated ({b['energy_method'] if b else '-'}).", ""]
    if c and b:
        ratio = c["measured"]["energy_j"] / b["energy_j"]
        lines += [f"Chosen (cheapest trial with val accuracy >= 0.94): trial {c['number']}, val "
                  f"{c['measured']['val']['accuracy']:.4f}, **test {c['measured']['test']['accuracy']:.4f}**, "
                  f"{c['measured']['energy_j']:.1f} J against the default recipe's {b['energy_j']:.1f} J "
                  f"(test {b['test']['accuracy']:.4f}): **{ratio:.2f}x** (bar <= 0.33: "
                  f"{'met' if ratio <= 1 / 3 else 'NOT met'}).", "", f"    {c['command']}", ""]
    lines += ["![sweep front](img/sweep-front.png)", "", "```", text, "```"]
    write_section("Sweep: mnist1d-cnn (bench/answer.py sweep)", "\n".join(lines))


def scale(root: Path) -> None:
    from powertrain.study.plan import format_plan, plan
    from powertrain.study.scale import format_fit, scale as run_scale

    t0 = time.perf_counter()
    fit = run_scale("gpt-stdlib", SIZES, BUDGETS, out=root / "scale-gpt", overrides=GPT)
    wall = time.perf_counter() - t0
    text = format_fit(fit)
    print(text)
    shutil.copy(fit["picture"], DOCS_IMG / "scaling-fit.png")
    bt = fit["backtest"]
    ok = bt["max_abs_error"] <= 0.05
    p = format_plan(plan(flops=1e15, from_fit=fit["path"], device="cpu"))
    body = [f"{_where()}. `python bench/answer.py scale` = `powertrain scale gpt-stdlib {' '.join(GPT)} --sizes "
            f"{','.join(map(str, SIZES))} --budgets {','.join(f'{b:g}' for b in BUDGETS)}`: the 12 runs trained for "
            f"{fit['calibration']['seconds'] / 60:.1f} min in all (sum of their fit times; this call took {wall / 60:.1f} "
            f"min, reusing the runs already in --root).", "",
            f"Back-test: fitted on widths {', '.join(map(str, SIZES[:-1]))}, the largest ({SIZES[-1]}) predicted "
            f"within **{bt['max_abs_error']:.1%}** at worst (bar 5%: {'met' if ok else 'NOT met'}).", "",
            "![scaling fit](img/scaling-fit.png)", "", "```", text, "```", "",
            "`powertrain plan --from-fit .../fit.json --flops 1e15 --device cpu`:", "", "```", p, "```"]
    write_section("Scaling law: gpt-stdlib (bench/answer.py scale)", "\n".join(body))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["sweep", "scale", "all"])
    p.add_argument("--root", default="/tmp/powertrain-answer")
    p.add_argument("--trials", type=int, default=20)
    a = p.parse_args()
    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    if a.part in ("sweep", "all"):
        sweep(root, a.trials)
    if a.part in ("scale", "all"):
        scale(root)


if __name__ == "__main__":
    main()
