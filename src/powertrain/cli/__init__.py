"""The `powertrain` command: a thin layer over the Python API."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys

from .errors import PowertrainError


def _print_results(run, quiet: bool = False) -> None:
    if not run.trainer.dist.is_main:  # a job prints one report: rank 0's
        return
    if quiet:  # --quiet: the run directory alone, for scripts
        print(run.dir)
        return
    for split in ("test", "val"):
        m = run.metrics.get(split)
        if m:
            text = "  ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float))
            print(f"{split}: {text}")
    from .bill import format_bill

    print(format_bill(run.bill))
    print(f"run written to {run.dir}")


def cmd_train(args) -> int:
    from .api import train

    recipe, overrides = args.recipe, list(args.overrides)
    if "=" in recipe:  # `powertrain train train.lr=1e-3`: an override of the default recipe
        recipe, overrides = "mnist1d-cnn", [recipe, *overrides]
    if args.nproc:  # torchrun starts N processes that run this command without --nproc
        from .distributed import default_out, launch, refuse_before_launch
        from .recipe import load_recipe

        r = load_recipe(recipe, overrides)  # a bad recipe fails here, once, not in N processes
        refuse_before_launch(r)
        out = args.out or r.run.out or str(default_out(r.name))  # fixed now: restarts resume the same folder
        return launch(["train", recipe, *overrides, "--out", out, *_quiet_flags(args)], args.nproc)
    _print_results(train(recipe, overrides, out=args.out, callbacks=_callbacks(args)), args.quiet)
    return 0


def _callbacks(args):
    """None: the default progress display; []: none (--no-progress, --quiet)."""
    return [] if args.quiet or not args.progress else None


def _quiet_flags(args) -> list[str]:
    return [*(["--quiet"] if args.quiet else []), *([] if args.progress else ["--no-progress"])]


def cmd_distill(args) -> int:
    from .api import train
    from .bill import _si
    from .recipe import apply_overrides, load_recipe, parse_recipe

    kd = [o for o in args.overrides if o.startswith("train.distill.")]  # need the teacher in place to validate
    raw = load_recipe(args.recipe, [o for o in args.overrides if o not in kd]).to_dict()
    raw["train"]["distill"] = {**(raw["train"].get("distill") or {}), "teacher": args.teacher}
    kd += [f"train.distill.{k}={v}" for k, v in (("alpha", args.alpha), ("temperature", args.temperature)) if v is not None]
    if args.nproc:  # as `train --nproc`: validated here once, then N processes run this command without --nproc
        from .distributed import default_out, launch, refuse_before_launch

        r = parse_recipe(apply_overrides(raw, kd))
        refuse_before_launch(r)
        out = args.out or r.run.out or str(default_out(r.name))
        flags = [f"--{k}={v}" for k, v in (("alpha", args.alpha), ("temperature", args.temperature)) if v is not None]
        return launch(["distill", "--teacher", args.teacher, args.recipe, *args.overrides, *flags, "--out", out,
                       *_quiet_flags(args)], args.nproc)
    run = train(parse_recipe(apply_overrides(raw, kd)), out=args.out, callbacks=_callbacks(args))
    _print_results(run, args.quiet)
    if args.quiet:
        return 0
    t, d = run.bill.get("teacher"), run.bill.get("distill")
    if t and d:
        def line(who, b):
            return (f"{who}: {b['params']:,} params, {_si(b['flops_per_sample_forward'], 'FLOP')} and "
                    f"{_si(b['j_per_inference_sample'], 'J')} per inference sample")

        print(line("teacher", t) + f" (its test accuracy {t['test'].get('accuracy', float('nan')):.4f})")
        print(line("student", d["student"]) + f" ({t['params'] / max(d['student']['params'], 1):.1f}x fewer params)")
        print(f"teacher forward FLOPs in this training: {_si(d['teacher_forward_flops'], 'FLOP')} "
              f"({'cached logits' if d['cached_logits'] else 'every batch'}; included in the training FLOPs)")
    return 0


def cmd_resume(args) -> int:
    from .api import resume

    if args.nproc:  # validated here once, before torchrun starts N processes
        from .api import check_resume_overrides
        from .distributed import launch, refuse_before_launch
        from .rundir import RunDir

        run = RunDir.open(args.run_dir)
        new = run.recipe(args.overrides)
        check_resume_overrides(run.recipe(), new)
        refuse_before_launch(new)
        return launch(["resume", args.run_dir, *args.overrides, *_quiet_flags(args)], args.nproc)
    _print_results(resume(args.run_dir, args.overrides, callbacks=_callbacks(args)), args.quiet)
    return 0


def cmd_eval(args) -> int:
    from .api import evaluate

    metrics = evaluate(args.run_dir, args.split, checkpoint=args.checkpoint)
    print(json.dumps({args.split: metrics}, indent=2))
    return 0


def _run_overrides(args) -> list[str]:
    out = []
    for key in ("region", "pue", "price_per_kwh"):
        if getattr(args, key, None) is not None:
            out.append(f"run.{key}={getattr(args, key)}")
    return out


def cmd_bill(args) -> int:
    from .bill import format_bill, read_bill, recarbon
    from .rundir import open_run

    path, recipe = open_run(args.run_dir, _run_overrides(args))
    bill = read_bill(path)
    if _run_overrides(args):
        bill = recarbon(bill, recipe.run)
    print(json.dumps(bill, indent=2) if args.json else format_bill(bill))
    return 0


def cmd_regions(args) -> int:
    from .measure import REGIONS

    for r in sorted(REGIONS.values(), key=lambda r: r.g_per_kwh):
        print(f"{r.region:<12} {r.g_per_kwh:>6g} g CO2e/kWh  ({r.year}; {r.source})")
    return 0


def cmd_compare(args) -> int:
    from .report import compare, table

    rows, png = compare(args.run_dirs, args.metric, args.split, png=args.png)
    print(table(rows, args.metric))
    if png:
        print(f"Pareto plot written to {png}")
    return 0


def cmd_report(args) -> int:
    from .report_html import report

    path = report(args.run_dirs, out=args.out, metric=args.metric, split=args.split)
    print(path if args.quiet else f"report written to {path} (open it in a browser; it needs no network)")
    return 0


def cmd_runs(args) -> int:
    from .runlist import find_runs, format_runs

    rows = find_runs(args.dir)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_runs(rows, args.dir))
    return 0


def cmd_predict(args) -> int:
    from .predict import format_predictions, inference_line, predict, write_predictions

    result = predict(args.run_dir, args.input,
                     batch_size=_number(args.batch_size, "--batch-size", int, "a whole number >= 1"),
                     max_new_tokens=_number(args.max_new_tokens, "--max-new-tokens", int, "a whole number >= 0"))
    if args.out:
        print(f"predictions written to {write_predictions(result, args.out)}")
    else:
        print(format_predictions(result))
    print(inference_line(result), file=sys.stderr if not args.out else sys.stdout)
    return 0


def cmd_explain(args) -> int:
    from .explain import METHODS, explain, format_explain

    methods = [m.strip() for arg in (args.method or [",".join(METHODS)]) for m in arg.split(",") if m.strip()]
    r = explain(args.run_dir, methods, split=args.split, n=_number(args.n, "--n", int, "a whole number >= 2"),
                target=args.target, checkpoint=args.checkpoint, seed=_number(args.seed, "--seed", int, "a whole number"),
                checks=args.checks)
    print(format_explain(r))
    print(f"written: {args.run_dir}/explain.json, {args.run_dir}/{r['picture']}")
    return 0


def cmd_audit(args) -> int:
    from .audit import audit, format_audit

    r = audit(args.run_dir, n=_number(args.n, "--n", int, "a whole number >= 10"), nonmembers=args.nonmembers,
              seed=_number(args.seed, "--seed", int, "a whole number"), checkpoint=args.checkpoint)
    print(format_audit(r))
    print(f"written: {args.run_dir}/audit.json, {args.run_dir}/{r['picture']}")
    return 0


def cmd_plan(args) -> int:
    from .plan import format_plan, plan

    print(format_plan(plan(params=args.params, tokens=args.tokens, device=args.device, count=args.count,
                           dtype=args.dtype, mfu=args.mfu, from_run=args.from_run, region=args.region,
                           pue=args.pue, price_per_kwh=args.price_per_kwh, flops=args.flops, from_fit=args.from_fit)))
    return 0


def cmd_peak(args) -> int:
    from .measure import cpu_peak

    p = cpu_peak(args.dtype, refresh=args.refresh)
    print(f"{p.device}: {p.flops_per_s / 1e9:.1f} GFLOP/s {p.dtype} ({p.source})")
    return 0


def _number(text: str, flag: str, kind: type, expected: str):
    """`text` as an int or float for `flag`, or a one-line RecipeError (argparse would print usage too)."""
    try:
        return kind(text)
    except ValueError:
        from .errors import RecipeError

        raise RecipeError(f"{flag}: expected {expected}, got '{text}'") from None


def cmd_generate(args) -> int:
    from .generate import generate

    top_k = _number(args.top_k, "--top-k", int, "a whole number >= 1, or 0 for no limit")
    text = generate(args.run_dir, prompt=args.prompt,
                    max_new_tokens=_number(args.max_new_tokens, "--max-new-tokens", int, "a whole number >= 0"),
                    temperature=_number(args.temperature, "--temperature", float, "a number >= 0 (0: greedy)"),
                    top_k=top_k or None, seed=_number(args.seed, "--seed", int, "a whole number"))
    print(text)
    return 0


def cmd_recipes(args) -> int:
    import yaml

    from .recipe import builtin_recipes

    for name, path in sorted(builtin_recipes().items()):
        raw = yaml.safe_load(path.read_text())
        print(f"{name:<22} {raw.get('description', '')}")
    return 0


class _Intermixed(argparse.ArgumentParser):
    """A subcommand's parser that takes options before, between and after its positionals
    (`train digits-mlp --nproc 2 train.epochs=1`); plain argparse stops at the first option."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner:  # parse_known_intermixed_args calls back into this method twice
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


CHECKPOINT_HELP = ("use this checkpoint instead of the final weights, e.g. step-00000040; "
                   "needed when the newest checkpoint is damaged")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="powertrain", description="Train neural networks and get a measured bill.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"powertrain {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Intermixed)

    t = sub.add_parser("train", help="train a recipe into a new run directory")
    t.add_argument("recipe", nargs="?", default="mnist1d-cnn", help="built-in recipe name or YAML path (default mnist1d-cnn)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-3 train.epochs=5")
    t.add_argument("--out", help="run directory (default runs/<recipe>-<timestamp>)")
    t.add_argument("--nproc", type=int, help="launch N processes on this node with torchrun (DDP, or train.strategy)")
    quiet_args(t)
    t.set_defaults(func=cmd_train)

    ds = sub.add_parser("distill", help="train a student recipe against a trained teacher run (knowledge distillation)")
    ds.add_argument("--teacher", required=True, help="the teacher's run directory (same classes, or same tokenizer)")
    ds.add_argument("recipe", help="the student: built-in recipe name or YAML path")
    ds.add_argument("overrides", nargs="*", help="dotted overrides of the student, e.g. model.conv=[16,32] train.epochs=5")
    ds.add_argument("--alpha", help="weight of the hard-label cross-entropy, 0..1 (default 0.5 or the recipe's)")
    ds.add_argument("--temperature", help="softmax temperature T of the soft targets (default 4.0 or the recipe's)")
    ds.add_argument("--out", help="run directory (default runs/<recipe>-<timestamp>)")
    ds.add_argument("--nproc", type=int, help="launch N processes on this node with torchrun (DDP)")
    quiet_args(ds)
    ds.set_defaults(func=cmd_distill)

    r = sub.add_parser("resume", help="continue a run from its last checkpoint")
    r.add_argument("run_dir")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=20 to train longer")
    r.add_argument("--nproc", type=int, help="resume with N processes on this node (any number: see docs/scaling.md)")
    quiet_args(r)
    r.set_defaults(func=cmd_resume)

    e = sub.add_parser("eval", help="recompute a split's metrics from a run's checkpoint")
    e.add_argument("run_dir")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    e.set_defaults(func=cmd_eval)

    sub.add_parser("recipes", help="list the built-in recipes").set_defaults(func=cmd_recipes)

    g = sub.add_parser("generate", help="continue a prompt with a trained language model (e.g. gpt-stdlib)")
    g.add_argument("run_dir")
    g.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    g.add_argument("--max-new-tokens", dest="max_new_tokens", default="500", help="tokens to add (default 500)")
    g.add_argument("--temperature", default="0.8", help="divides the logits; 0 takes the most likely token (default 0.8)")
    g.add_argument("--top-k", dest="top_k", default="40", help="sample among the k most likely tokens; 0: all (default 40)")
    g.add_argument("--seed", default="0", help="seed of the draws: the same seed gives the same text (default 0)")
    g.set_defaults(func=cmd_generate)

    def carbon_args(q):
        q.add_argument("--region", help="grid region for CO2e (see `powertrain regions`) or g CO2e/kWh")
        q.add_argument("--pue", type=float, help="facility power usage effectiveness (>= 1)")
        q.add_argument("--price-per-kwh", dest="price_per_kwh", type=float, help="electricity price per kWh")

    b = sub.add_parser("bill", help="print a run's bill (FLOPs, MFU, time, memory, energy, CO2e)")
    b.add_argument("run_dir")
    b.add_argument("--json", action="store_true", help="print bill.json")
    carbon_args(b)
    b.set_defaults(func=cmd_bill)
    sub.add_parser("regions", help="list the grid regions and their carbon intensity").set_defaults(func=cmd_regions)

    c = sub.add_parser("compare", help="compare runs: table and Pareto plot of metric vs energy and FLOPs")
    c.add_argument("run_dirs", nargs="+")
    c.add_argument("--metric", default="accuracy")
    c.add_argument("--split", default="test", choices=["val", "test"])
    c.add_argument("--png", default="compare.png", help="where to write the plot (default compare.png)")
    c.set_defaults(func=cmd_compare)

    pl = sub.add_parser("plan", help="predict a training run's FLOPs, time, energy, CO2e and cost")
    pl.add_argument("--params", type=float, help="model parameters N (e.g. 7e9)")
    pl.add_argument("--tokens", type=float, help="training tokens (or samples) D; default: Chinchilla 20 N")
    pl.add_argument("--flops", type=float, help="a FLOP budget instead of N and D: gives the compute-optimal split")
    pl.add_argument("--device", default="h100", help="device in the peak table, e.g. h100, a100, h200, l4; "
                                                     "or cpu: this machine's CPU at its measured peak")
    pl.add_argument("--count", type=int, default=1, help="number of devices")
    pl.add_argument("--dtype", help="number format of the peak: bf16 (default on GPUs), fp32 (default on the CPU), fp16")
    pl.add_argument("--mfu", type=float, help="assumed MFU (default 0.40, or measured with --from)")
    pl.add_argument("--from", dest="from_run", help="calibrate MFU and J/FLOP from this measured run directory")
    pl.add_argument("--from-fit", help="fit.json of powertrain scale: predict the loss too, split a --flops budget by the "
                                       "fitted law, calibrate MFU and J/FLOP from its runs")
    carbon_args(pl)
    pl.set_defaults(func=cmd_plan)

    rp = sub.add_parser("report", help="one self-contained HTML page about one or several runs (curves, bill, energy, Pareto)")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN", help="run directories (several: compared on one page)")
    rp.add_argument("--out", help="the HTML file (default: RUN/report.html for one run, ./report.html for several)")
    rp.add_argument("--metric", help="metric to compare several runs on (default: their headline metric, e.g. accuracy)")
    rp.add_argument("--split", default="test", choices=["val", "test"])
    rp.add_argument("--quiet", "-q", action="store_true", help="print only the file written")
    rp.set_defaults(func=cmd_report)

    rs = sub.add_parser("runs", help="list the runs under a folder: recipe, status, headline metric, energy, date")
    rs.add_argument("dir", nargs="?", default="runs", help="folder to search (default: runs)")
    rs.add_argument("--json", action="store_true", help="print the rows as JSON")
    rs.set_defaults(func=cmd_runs)

    pr = sub.add_parser("predict", help="run a trained model on a file (CSV, .npy, image, or a prompt) and bill the inference")
    pr.add_argument("run_dir")
    pr.add_argument("input", help="a .csv, .npy, image file or folder of images; for a language model, the prompt")
    pr.add_argument("--out", help="write the predictions to a .csv, .json (with the bill) or .npy (raw outputs) file")
    pr.add_argument("--batch-size", dest="batch_size", default="256", help="samples per forward pass (default 256)")
    pr.add_argument("--max-new-tokens", dest="max_new_tokens", default="100",
                    help="language models: tokens of greedy continuation (default 100)")
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("explain", help="attribute a run's predictions to its inputs (Captum), check the maps, bill it")
    ex.add_argument("run_dir")
    ex.add_argument("--method", action="append", help="saliency, integrated_gradients, occlusion (repeat, or a comma "
                                                     "list; default: all three)")
    ex.add_argument("--split", choices=["train", "val", "test"], help="samples to explain (default test, else val)")
    ex.add_argument("--n", default="16", help="samples to explain and check (default 16)")
    ex.add_argument("--target", default="predicted", choices=["predicted", "true"], help="class explained (default predicted)")
    ex.add_argument("--seed", default="0", help="which samples, and the random parts of the checks (default 0)")
    ex.add_argument("--no-checks", dest="checks", action="store_false", help="only the maps: no deletion, "
                                                                            "randomisation, infidelity, sensitivity")
    ex.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    ex.set_defaults(func=cmd_explain)

    au = sub.add_parser("audit", help="membership-inference audit of a run: AUC, TPR at 1%% FPR, the bound of its privacy")
    au.add_argument("run_dir")
    au.add_argument("--n", default="5000", help="members and non-members each, at most (default 5000)")
    au.add_argument("--nonmembers", choices=["val", "test"], help="held-out split (default test, else val)")
    au.add_argument("--seed", default="0", help="which samples, and the bootstrap's draws (default 0)")
    au.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    au.set_defaults(func=cmd_audit)

    from .compress.cli import add_commands

    add_commands(sub)  # prune, quantize, export
    from .study_cli import add_commands as add_study

    add_study(sub)  # sweep, scale

    pk = sub.add_parser("peak", help="measure (and cache) this CPU's peak matmul FLOP/s")
    pk.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16", "fp64"])
    pk.add_argument("--refresh", action="store_true", help="measure again instead of reading the cache")
    pk.set_defaults(func=cmd_peak)
    for name, command in sub.choices.items():  # every command's --help ends with an example
        example = EXAMPLES.get(name)
        if example:
            command.epilog = "example:\n  " + example
            command.formatter_class = argparse.RawDescriptionHelpFormatter
    return p


def quiet_args(q) -> None:
    q.add_argument("--no-progress", dest="progress", action="store_false", help="no progress display")
    q.add_argument("--quiet", "-q", action="store_true", help="no progress and no results: print only the run directory")


EXAMPLES = {  # one per command, shown by `powertrain COMMAND --help`
    "train": "powertrain train digits-mlp train.epochs=5 --out runs/digits --no-progress",
    "distill": "powertrain distill --teacher runs/digits-cnn digits-mlp --temperature 4 --out runs/student",
    "resume": "powertrain resume runs/digits train.epochs=20",
    "eval": "powertrain eval runs/digits --split val",
    "recipes": "powertrain recipes",
    "generate": "powertrain generate runs/gpt-stdlib --prompt 'def ' --max-new-tokens 200",
    "bill": "powertrain bill runs/digits --region 350 --pue 1.2",
    "regions": "powertrain regions",
    "compare": "powertrain compare runs/digits-* --metric accuracy --png pareto.png",
    "plan": "powertrain plan --params 7e9 --device h100 --count 64",
    "report": "powertrain report runs/digits runs/digits-int8 --out compare.html",
    "runs": "powertrain runs runs/",
    "predict": "powertrain predict runs/digits samples.npy --out predictions.csv",
    "prune": "powertrain prune runs/digits --channels 0.5 --out runs/digits-pruned",
    "quantize": "powertrain quantize runs/digits --mode static --out runs/digits-int8",
    "export": "powertrain export runs/digits --format onnx --out digits.onnx",
    "peak": "powertrain peak --dtype bf16 --refresh",
    "explain": "powertrain explain runs/digits --method integrated_gradients --n 32 --target true",
    "audit": "powertrain audit runs/digits-private --n 1000",
    "sweep": "powertrain sweep mnist1d-cnn --space space.yaml --trials 20 --target accuracy>=0.94 --baseline",
    "scale": "powertrain scale gpt-stdlib --sizes 32,48,64,96 --budgets 2e12,6e12 --out scaling/gpt",
}


_OS_FIXES = {  # errno -> (the cause in words, the fix)
    errno.ENOSPC: ("no space left on the device", "free some space, or choose a folder on another disk with --out"),
    errno.EDQUOT: ("disk quota exceeded", "free some space, or choose a folder on another disk with --out"),
    errno.EROFS: ("read-only file system", "choose a writable folder with --out"),
    errno.EACCES: ("permission denied", "choose a folder you can write with --out, or change its permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write with --out, or change its permissions"),
    errno.ENOTDIR: ("a file stands where a folder is needed", "pass a folder, not a file (e.g. a new --out path)"),
    errno.EISDIR: ("is a folder, not a file", "pass a file path, not a folder"),
    errno.EEXIST: ("already exists", "choose a new path, or remove the old one"),
    errno.ENOENT: ("no such file or folder", "check the path"),
}


def os_error_message(e: OSError) -> str:
    """One line for an OSError: the path, the cause in words, and the fix."""
    cause, fix = _OS_FIXES.get(e.errno, ((e.strerror or str(e)).lower(), "check the path and try again"))
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    where = f"'{paths[0]}'" + (f" -> '{paths[1]}'" if len(paths) > 1 else "") if paths else "a file operation"
    return f"{where}: {cause}; {fix}"


def _quiet_stdout() -> None:
    """After a closed pipe (`powertrain regions | head -1`): point stdout at devnull, so that the
    interpreter's last flush at exit does not fail again (the recipe in Python's signal docs)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at exit
        return code
    except PowertrainError as e:
        print(f"powertrain: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # the reader went away (`| head`): nothing left to say to it
        _quiet_stdout()
        return 141  # 128 + SIGPIPE, as a command killed by the closed pipe reports
    except OSError as e:  # disk full, read-only, not a folder, permission denied, ...
        print(f"powertrain: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Interrupted: 130 for SIGINT, 143 for SIGTERM (checkpoint saved, resume printed)
        return getattr(e, "exit_code", 130)


if __name__ == "__main__":
    raise SystemExit(main())
