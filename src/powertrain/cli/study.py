"""`powertrain sweep` and `powertrain scale`: the commands that answer "which model, trained how" and
"what would the big run cost". cli/__init__.py calls `add_commands(subparsers)`."""
from __future__ import annotations

import sys

from ..errors import RecipeError
from ..run.atomic import dumps


def _int(text, flag: str, low: int = 1) -> int:
    try:
        v = int(text)
    except (TypeError, ValueError):
        raise RecipeError(f"{flag}: expected a whole number >= {low}, got '{text}'") from None
    if v < low:
        raise RecipeError(f"{flag}: expected a whole number >= {low}, got {v}")
    return v


def cmd_sweep(args) -> int:
    from ..study.space import load_space
    from ..study.sweep import Sweep, run_sweep
    from ..study.summary import format_summary, summarize

    out = sys.stderr if args.json or args.worker else sys.stdout  # with --json, stdout holds the JSON alone
    # (a --worker's stdout is its parent's: its trial lines go to stderr)
    say = (lambda *a: None) if args.quiet else (lambda line: print(line, file=out, flush=True))
    if args.resume:
        if args.recipe or args.space:
            raise RecipeError("powertrain sweep --resume DIR: takes no RECIPE or --space (the sweep directory has them)")
        sweep = Sweep(args.resume)
        if args.worker:
            sweep.worker = True
            sweep.work(say)
            return 0
        if args.summary:
            summary = summarize(sweep, from_folders=True)  # a damaged journal: the table from the trial folders
            print(dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
            return 0
    else:
        if not args.recipe or not args.space:
            raise RecipeError("powertrain sweep: give RECIPE and --space SPACE.yaml (or --resume SWEEP_DIR)")
        recipe, *overrides = args.recipe
        _, space = load_space(args.space)
        sweep = Sweep.create(recipe, space, overrides=overrides, out=args.out, trials=_int(args.trials, "--trials"),
                             objectives=args.objectives, target=args.target, split=args.split, storage=args.storage,
                             seed=_int(args.seed, "--seed", 0), pruner=args.pruner, baseline=args.baseline)
        say(f"sweep {sweep.path}: {sweep.cfg['trials']} trials of {recipe} over {', '.join(d.key for d in sweep.dims)}")
    try:
        summary = run_sweep(sweep, workers=_int(args.workers, "--workers"), say=say)
    except KeyboardInterrupt as e:
        print(f"\nsweep interrupted; finished trials are kept. continue with: powertrain sweep --resume {sweep.path}",
              file=sys.stderr)
        return getattr(e, "exit_code", 130)  # 143 after SIGTERM (signals.Interrupted)
    if args.json:
        print(dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary))
    return 0


def cmd_scale(args) -> int:
    from ..study.scale import format_fit, parse_budgets, parse_sizes, scale

    recipe, *overrides = args.recipe
    fit = scale(recipe, parse_sizes(args.sizes), parse_budgets(args.budgets), size_key=args.size_key, out=args.out,
                overrides=overrides, say=(lambda *a: None) if args.quiet else (lambda line: print(line, flush=True)),
                draws=_int(args.draws, "--draws", 0))
    print(format_fit(fit))
    return 0


def add_commands(sub) -> None:
    s = sub.add_parser("sweep", help="search recipe settings with Optuna for the cheapest run that reaches a target")
    s.add_argument("recipe", nargs="*", metavar="RECIPE [key=value ...]",
                   help="built-in recipe name or YAML file, then overrides fixed for every trial")
    s.add_argument("--space", help="SPACE.yaml: recipe keys and their choices or ranges")
    s.add_argument("--trials", default="20", help="trials in the study, all workers together (default 20)")
    s.add_argument("--objectives", nargs="+", default=["accuracy:max", "energy_j:min"],
                   help="NAME:max|min; metrics of eval.json, or energy_j, flops, time_s, params, co2e_g "
                        "(default accuracy:max energy_j:min)")
    s.add_argument("--target", help="e.g. accuracy>=0.94: choose the cheapest trial that reaches it")
    s.add_argument("--split", default="val", choices=["val", "test"],
                   help="split the metrics are judged on (default val: choosing on test would leak it)")
    s.add_argument("--storage", help="Optuna storage URL shared by workers on several machines (default: a journal "
                                     "file in the sweep directory)")
    s.add_argument("--workers", default="1", help="local worker processes on the study (default 1)")
    s.add_argument("--pruner", default="median", choices=["median", "none"], help="stop hopeless trials (default median)")
    s.add_argument("--baseline", action="store_true", help="also train the recipe as it is, to compare with")
    s.add_argument("--seed", default="0", help="the sampler's seed (default 0)")
    s.add_argument("--out", help="sweep directory (default sweeps/RECIPE_NAME)")
    s.add_argument("--resume", metavar="SWEEP_DIR", help="continue a sweep (or join it as one more worker)")
    s.add_argument("--summary", action="store_true", help="with --resume: print the summary, run nothing")
    s.add_argument("--worker", action="store_true", help="with --resume: run trials only (what --workers starts)")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--quiet", action="store_true", help="no line per trial")
    s.set_defaults(func=cmd_sweep)

    c = sub.add_parser("scale", help="train model sizes at several FLOP budgets, fit L(N, D) (Chinchilla), back-test it")
    c.add_argument("recipe", nargs="+", metavar="RECIPE [key=value ...]")
    c.add_argument("--sizes", required=True, help="values of the size key, e.g. 32,48,64,96 (at least 3; the largest "
                                                  "is held out for the back-test)")
    c.add_argument("--budgets", required=True, help="training FLOP budgets as the bill counts them, e.g. 2e12,6e12")
    c.add_argument("--size-key", help="recipe key that sets the size (default: model.n_embd for gpt, ...)")
    c.add_argument("--out", help="folder for the runs, fit.json and fit.png (default scaling/RECIPE_NAME)")
    c.add_argument("--draws", default="100", help="bootstrap refits for the intervals (default 100)")
    c.add_argument("--quiet", action="store_true", help="no line per run")
    c.set_defaults(func=cmd_scale)
