"""`powertrain train | distill | resume | eval | recipes`: runs made and continued."""
from __future__ import annotations

import sys
from pathlib import Path

from ..run.atomic import dumps
from .common import CHECKPOINT_HELP, callbacks, print_results, quiet_args, quiet_flags


def cmd_train(args) -> int:
    from ..train.lifecycle import train

    recipe, overrides = args.recipe, list(args.overrides)
    if "=" in recipe:  # `powertrain train train.lr=1e-3`: an override of the default recipe
        recipe, overrides = "mnist1d-cnn", [recipe, *overrides]
    if args.nproc:  # torchrun starts N processes that run this command without --nproc
        from ..train.distributed import default_out, launch, refuse_before_launch
        from ..recipe import load_recipe

        r = load_recipe(recipe, overrides)  # a bad recipe fails here, once, not in N processes
        refuse_before_launch(r)
        out = args.out or r.run.out or str(default_out(r.name))  # fixed now: restarts resume the same folder
        return launch(["train", recipe, *overrides, "--out", out, *quiet_flags(args)], args.nproc)
    from ..recipe import load_recipe

    r = load_recipe(recipe, overrides)
    if not args.out and r.run.out:  # the recipe file chose the folder (under the working directory): say which
        print(f"powertrain: run folder {Path(r.run.out).resolve()} (the recipe's run.out; --out chooses another)",
              file=sys.stderr, flush=True)
    print_results(train(r, out=args.out, callbacks=callbacks(args)), args.quiet)
    return 0


def cmd_distill(args) -> int:
    from ..train.lifecycle import train
    from ..measure.bill import _si
    from ..recipe import apply_overrides, load_recipe, parse_recipe

    kd = [o for o in args.overrides if o.startswith("train.distill.")]  # need the teacher in place to validate
    raw = load_recipe(args.recipe, [o for o in args.overrides if o not in kd]).to_dict()
    raw["train"]["distill"] = {**(raw["train"].get("distill") or {}), "teacher": args.teacher}
    kd += [f"train.distill.{k}={v}" for k, v in (("alpha", args.alpha), ("temperature", args.temperature)) if v is not None]
    if args.nproc:  # as `train --nproc`: validated here once, then N processes run this command without --nproc
        from ..train.distributed import default_out, launch, refuse_before_launch

        r = parse_recipe(apply_overrides(raw, kd))
        refuse_before_launch(r)
        out = args.out or r.run.out or str(default_out(r.name))
        flags = [f"--{k}={v}" for k, v in (("alpha", args.alpha), ("temperature", args.temperature)) if v is not None]
        return launch(["distill", "--teacher", args.teacher, args.recipe, *args.overrides, *flags, "--out", out,
                       *quiet_flags(args)], args.nproc)
    run = train(parse_recipe(apply_overrides(raw, kd)), out=args.out, callbacks=callbacks(args))
    print_results(run, args.quiet)
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
    from ..train.lifecycle import resume

    if args.nproc:  # validated here once, before torchrun starts N processes
        from ..train.lifecycle import check_resume_overrides
        from ..train.distributed import launch, refuse_before_launch
        from ..run.rundir import RunDir

        run = RunDir.open(args.run_dir)
        new = run.recipe(args.overrides)
        check_resume_overrides(run.recipe(), new)
        refuse_before_launch(new)
        return launch(["resume", args.run_dir, *args.overrides, *quiet_flags(args)], args.nproc)
    print_results(resume(args.run_dir, args.overrides, callbacks=callbacks(args)), args.quiet)
    return 0


def cmd_eval(args) -> int:
    from ..train.load import evaluate

    metrics = evaluate(args.run_dir, args.split, checkpoint=args.checkpoint)
    print(dumps({args.split: metrics}, indent=2))
    return 0


def cmd_recipes(args) -> int:
    import yaml

    from ..recipe import builtin_recipes

    for name, path in sorted(builtin_recipes().items()):
        raw = yaml.safe_load(path.read_text())
        print(f"{name:<22} {raw.get('description', '')}")
    return 0


def add_commands(sub) -> None:
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
