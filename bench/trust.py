"""Trust benchmarks (issue 12): accuracy, energy and a membership-inference attack against epsilon, and
explanations checked; the tables go into docs/trust.md, the pictures into docs/trust/.

    python bench/trust.py privacy [--recipes digits-mlp mnist1d-cnn fashion-convnet large-batch-mnist1d-cnn] [--seeds 0]
    python bench/trust.py explain [--recipes fashion-convnet csv-mlp mnist1d-cnn gpt-stdlib fashion-autoencoder]
    python bench/trust.py all [--reuse]

privacy: each recipe trained without privacy and with train.privacy.epsilon in {1, 3, 8} (delta 1e-5, RDP,
max_grad_norm 1, the recipe's own optimizer and schedule), then `powertrain audit` on it (loss threshold,
up to 5000 train vs 5000 test samples). digits-mlp and mnist1d-cnn run their recipes as they are;
fashion-convnet runs short (20,000 train images, 3 epochs) to fit 2 shared cores; large-batch-mnist1d-cnn is
mnist1d-cnn with batches of 1000, the usual DP-SGD remedy for a small train set. explain: `powertrain
explain` (32 test samples, all three methods and checks) on the non-private runs of fashion-convnet and
mnist1d-cnn, and on csv-mlp, a short gpt-stdlib (300 steps) and fashion-autoencoder. Runs live under
--root (default /tmp/powertrain-trust); --reuse reads finished runs there instead of training them again.
Set OMP_NUM_THREADS=1 on a shared machine: two threads fighting other jobs for two cores ran tiny ops
hundreds of times slower here.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import torch

import powertrain
from powertrain.trust.audit import audit
from powertrain.trust.explain import explain
from powertrain.measure import reset_peak_memory

from docs_section import write_section

DOCS = Path(__file__).resolve().parents[1] / "docs" / "trust.md"
PICTURES = DOCS.parent / "trust"
EPSILONS = [1.0, 3.0, 8.0, None]
SETUPS = {
    "digits-mlp": {"overrides": [], "seeds": [0, 1, 2], "what": "the recipe as is (40 epochs of 64)"},
    "mnist1d-cnn": {"overrides": [], "seeds": [0], "what": "the recipe as is (60 epochs of 100); the private runs "
                                                          "train GroupNorm in place of BatchNorm (Opacus's fix)"},
    "fashion-convnet": {"overrides": ["data.train_limit=20000", "train.epochs=3"], "seeds": [0],
                        "what": "short: 20,000 train images, 3 epochs of 128 (the recipe: 60,000 x 8)"},
    "large-batch-mnist1d-cnn": {"recipe": "mnist1d-cnn", "overrides": ["train.batch_size=1000"], "seeds": [0],
                          "what": "the recipe with batches of 1000 (sampling rate 0.28, 216 steps): DP-SGD's usual "
                                  "remedy, larger batches average the noise down; the private runs train GroupNorm"},
}
EXPLAIN = {  # recipe: (overrides, samples, a privacy run to reuse or None)
    "fashion-convnet": (SETUPS["fashion-convnet"]["overrides"], 32, "fashion-convnet-none-s0"),
    "csv-mlp": ([], 32, None),
    "mnist1d-cnn": ([], 32, "mnist1d-cnn-none-s0"),
    "gpt-stdlib": (["train.max_steps=300", "train.eval_every_steps=300"], 8, None),
    "fashion-autoencoder": ([], 16, None),
}


def _read(out: Path, name: str) -> dict:
    return json.loads((out / name).read_text())


def train_once(recipe: str, overrides: list[str], out: Path, reuse: bool) -> bool:
    """Train into `out` unless --reuse finds it finished; True when read back."""
    if reuse and (out / "eval.json").is_file():
        return True
    shutil.rmtree(out, ignore_errors=True)
    reset_peak_memory()  # the bill's CPU peak is the process's high-water mark: restart it for this run
    powertrain.train(recipe, overrides, out=out, callbacks=[])
    return False


def privacy_row(recipe: str, eps, seed: int, root: Path, reuse: bool) -> dict:
    tag = f"eps{eps:g}" if eps else "none"
    out = root / f"{recipe}-{tag}-s{seed}"
    extra = [f"train.privacy.epsilon={eps}"] if eps else []
    setup = SETUPS[recipe]
    reused = train_once(setup.get("recipe", recipe), [*setup["overrides"], f"run.seed={seed}", *extra], out, reuse)
    if not (reuse and (out / "audit.json").is_file()):
        audit(out, n=5000)
    ev, b, a = _read(out, "eval.json"), _read(out, "bill.json"), _read(out, "audit.json")
    p = b.get("privacy") or {}
    return {"eps": eps, "seed": seed, "acc": ev["test"]["accuracy"], "spent": p.get("epsilon"),
            "sigma": p.get("noise_multiplier"), "fit_s": b["time_s"]["fit"], "energy_j": b["energy"]["total_j"],
            "method": b["energy"]["method"], "flops": b["flops"]["train_total"], "peak": b["peak_memory"]["peak_bytes"],
            "auc": a["auc"], "auc_ci": a["auc_ci95"], "tpr": a["tpr_at_1pct_fpr"], "tpr_ci": a["tpr_at_1pct_fpr_ci95"],
            "adv": a["advantage"], "bound": (a.get("bound") or {}).get("advantage"),
            "bound_auc": (a.get("bound") or {}).get("auc"), "n_audit": a["members"]["n"], "reused": reused,
            "changes": p.get("model_changes") or [], "dir": out}


def mean(xs):
    return statistics.mean(xs)


def pm(xs, fmt=".4f") -> str:
    return f"{mean(xs):{fmt}} ± {statistics.stdev(xs):{fmt}}" if len(xs) > 1 else format(xs[0], fmt)


def privacy_table(recipe: str, root: Path, seeds: list[int], reuse: bool) -> str:
    load = os.getloadavg()[0]
    t0 = time.time()
    rows = {eps: [privacy_row(recipe, eps, s, root, reuse) for s in seeds] for eps in EPSILONS}
    base = rows[None]
    lines = [f"`{SETUPS[recipe].get('recipe', recipe)}`, {SETUPS[recipe]['what']}; seeds {', '.join(map(str, seeds))} (mean ± std where several); "
             f"delta 1e-5, RDP accountant, max_grad_norm 1, Poisson sampling at the recipe's batch size. Audit: "
             f"loss threshold on {base[0]['n_audit']} train vs {base[0]['n_audit']} test samples, 95% bootstrap "
             f"intervals (one seed's).", "",
             "| ε target | ε spent | σ | test accuracy | fit time s | energy J | train FLOPs | peak memory | attack AUC "
             "[95% CI] | TPR at 1% FPR | advantage | DP bound on advantage / AUC |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    # peak memory: the process's RSS high-water mark (VmHWM), restarted before each run
    for eps, rs in rows.items():
        r0 = rs[0]
        bound = f"{r0['bound']:.3f} / {r0['bound_auc']:.3f}" if r0["bound"] is not None else "none (not private)"
        target = "none" if eps is None else f"{eps:g}"
        spent = "-" if r0["spent"] is None else pm([r["spent"] for r in rs], ".3f")
        sigma = "-" if r0["sigma"] is None else f"{r0['sigma']:.3f}"
        lines.append(
            f"| {target} | {spent} | {sigma} | "
            f"{pm([r['acc'] for r in rs])} | {mean([r['fit_s'] for r in rs]):.1f} | {mean([r['energy_j'] for r in rs]):.0f} | "
            f"{mean([r['flops'] for r in rs]):.3g} | {r0['peak'] / 2**20:.0f} MiB | "
            f"{pm([r['auc'] for r in rs], '.3f')} [{r0['auc_ci'][0]:.3f}, {r0['auc_ci'][1]:.3f}] | "
            f"{pm([r['tpr'] for r in rs], '.3f')} | {pm([r['adv'] for r in rs], '.3f')} | {bound} |")
    private = [r for e, rs in rows.items() if e for r in rs]
    ratio_t = mean([r["fit_s"] for r in private]) / mean([r["fit_s"] for r in base])
    ratio_e = mean([r["energy_j"] for r in private]) / mean([r["energy_j"] for r in base])
    ratio_f = mean([r["flops"] for r in private]) / mean([r["flops"] for r in base])
    changes = sorted({c for r in private for c in r["changes"]})
    reused = sum(r["reused"] for rs in rows.values() for r in rs)
    lines += ["",
              f"Privacy's cost on this recipe: {ratio_f:.2f}x the training FLOPs (per-sample gradients and clipping, "
              f"counted), {ratio_t:.1f}x the fit time and {ratio_e:.1f}x the energy of the run without it (per-sample "
              f"gradients are materialised: memory-bound work that FLOPs do not show). "
              + (f"Opacus's changes to the model: {'; '.join(changes)}. " if changes else "")
              + f"Energy is {base[0]['method']}.",
              f"Measured {time.strftime('%Y-%m-%d')} on CPU, torch {torch.__version__}, {torch.get_num_threads()} "
              f"thread(s), load average {load:.1f} at the start ({time.time() - t0:.0f} s for this table"
              + (f"; {reused} runs read back with --reuse" if reused else "") + f"). Runs under {root}."]
    best = rows[8.0][0]["dir"] if 8.0 in rows else None
    if best is not None:
        PICTURES.mkdir(parents=True, exist_ok=True)
        shutil.copy(best / "audit-roc.png", PICTURES / f"audit-{recipe}-eps8.png")
        shutil.copy(rows[None][0]["dir"] / "audit-roc.png", PICTURES / f"audit-{recipe}-none.png")
    return "\n".join(lines)


def explain_table(recipes: list[str], root: Path, reuse: bool) -> str:
    load = os.getloadavg()[0]
    lines = ["| recipe (kind) | method | deletion area: accuracy / score | faithful | randomisation ρ | sane | "
             "infidelity | sensitivity | FLOPs | time s | energy J (share of training) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for recipe in recipes:
        overrides, n, from_privacy = EXPLAIN[recipe]
        out = root / from_privacy if from_privacy else root / f"{recipe}-explain"
        if not from_privacy or not (out / "eval.json").is_file():
            train_once(recipe, overrides, out, reuse)
        r = explain(out, n=n)
        PICTURES.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / r["picture"], PICTURES / f"explain-{recipe}.png")
        acc = _read(out, "eval.json").get("test") or _read(out, "eval.json").get("val") or {}
        headline = acc.get("accuracy", acc.get("mse", acc.get("loss")))
        notes.append(f"`{recipe}` {' '.join(overrides) or '(recipe as is)'}: {r['n']} {r['split']} samples, "
                     f"its {'accuracy' if 'accuracy' in acc else 'loss'} {headline:.4f}")
        c = r["cost"]
        for i, (m, e) in enumerate(r["methods"].items()):
            d, z = e["deletion"], e["randomization"]
            area = f"{d['area_accuracy']:+.3f} / {d['area_score']:+.3f}" if "area_accuracy" in d else f"- / {d['area_score']:+.3g}"

            def g(v):
                return "-" if v is None else f"{v:.3g}"
            share = f" ({c['share_of_training']:.0%})" if c.get("share_of_training") else ""
            name = f"{recipe} ({r['kind']})" if i == 0 else ""
            lines.append(f"| {name} | {m} | {area} | "
                         f"{'yes' if d['faithful'] else 'no'} | {g(z['spearman'])} | {'yes' if z['passes'] else 'NO'} | "
                         f"{g(e['infidelity'])} | {g(e['sensitivity_max'])} | {e['flops']:.3g} | {e['time_s']:.1f} | "
                         f"{c['energy_j'] * e['time_s'] / max(sum(x['time_s'] for x in r['methods'].values()), 1e-9):.0f}"
                         f"{share if i == 0 else ''} |")
    lines += ["", "Runs: " + "; ".join(notes) + ".",
              f"Energy per method: the explain window's estimate split by each method's time; the share is the whole "
              f"explanation's energy over its run's training energy. Measured {time.strftime('%Y-%m-%d')} on CPU, torch "
              f"{torch.__version__}, {torch.get_num_threads()} thread(s), load average {load:.1f} at the start. "
              f"Runs under {root}."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", choices=["privacy", "explain", "all"])
    p.add_argument("--recipes", nargs="+")
    p.add_argument("--seeds", type=int, nargs="+", help="override each recipe's seeds")
    p.add_argument("--root", default="/tmp/powertrain-trust")
    p.add_argument("--reuse", action="store_true", help="read finished runs under --root instead of training them")
    args = p.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    if args.which in ("privacy", "all"):
        for recipe in (args.recipes if args.which == "privacy" and args.recipes else SETUPS):
            body = privacy_table(recipe, root, args.seeds or SETUPS[recipe]["seeds"], args.reuse)
            write_section(f"Privacy: {recipe} (bench/trust.py privacy)", body, docs=DOCS)
            print(body, flush=True)
    if args.which in ("explain", "all"):
        recipes = args.recipes if args.which == "explain" and args.recipes else list(EXPLAIN)
        body = explain_table(recipes, root, args.reuse)
        write_section("Explanations checked (bench/trust.py explain)", body, docs=DOCS)
        print(body, flush=True)


if __name__ == "__main__":
    main()
