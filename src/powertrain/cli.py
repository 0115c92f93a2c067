"""The `powertrain` command: a thin layer over the Python API."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import PowertrainError


def _print_results(run) -> None:
    for split in ("test", "val"):
        m = run.metrics.get(split)
        if m:
            text = "  ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float))
            print(f"{split}: {text}")
    print(f"run written to {run.dir}")


def cmd_train(args) -> int:
    from .api import train

    recipe, overrides = args.recipe, list(args.overrides)
    if "=" in recipe:  # `powertrain train train.lr=1e-3`: an override of the default recipe
        recipe, overrides = "mnist1d-cnn", [recipe, *overrides]
    _print_results(train(recipe, overrides, out=args.out))
    return 0


def cmd_resume(args) -> int:
    from .api import resume

    _print_results(resume(args.run_dir, args.overrides))
    return 0


def cmd_eval(args) -> int:
    from .api import evaluate

    metrics = evaluate(args.run_dir, args.split)
    print(json.dumps({args.split: metrics}, indent=2))
    return 0


def cmd_recipes(args) -> int:
    import yaml

    from .recipe import builtin_recipes

    for name, path in sorted(builtin_recipes().items()):
        raw = yaml.safe_load(path.read_text())
        print(f"{name:<22} {raw.get('description', '')}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="powertrain", description="Train neural networks and get a measured bill.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"powertrain {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a recipe into a new run directory")
    t.add_argument("recipe", nargs="?", default="mnist1d-cnn", help="built-in recipe name or YAML path (default mnist1d-cnn)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-3 train.epochs=5")
    t.add_argument("--out", help="run directory (default runs/<recipe>-<timestamp>)")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("resume", help="continue a run from its last checkpoint")
    r.add_argument("run_dir")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=20 to train longer")
    r.set_defaults(func=cmd_resume)

    e = sub.add_parser("eval", help="recompute a split's metrics from a run's checkpoint")
    e.add_argument("run_dir")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.set_defaults(func=cmd_eval)

    sub.add_parser("recipes", help="list the built-in recipes").set_defaults(func=cmd_recipes)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except PowertrainError as e:
        print(f"powertrain: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
