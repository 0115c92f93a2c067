"""What the command groups share: numbers from text with one-line errors, the progress flags, and how
a finished run is printed."""
from __future__ import annotations

from ..errors import RecipeError


CHECKPOINT_HELP = ("use this checkpoint instead of the final weights, e.g. step-00000040; needed when the "
                   "newest checkpoint is damaged, or while the run is still training")


def number(text, flag: str, kind: type, expected: str):
    """`text` as an int or float for `flag`, or a one-line RecipeError (argparse would print usage too);
    a value that is not text (a default already a number, or None) passes as it is."""
    if text is None or not isinstance(text, str):
        return text
    try:
        return kind(text)
    except ValueError:
        raise RecipeError(f"{flag}: expected {expected}, got '{text}'") from None


def dump(obj) -> str:
    """One JSON document for --json: strict (NaN and inf as null with a note beside: run/atomic.strict);
    numpy and torch scalars as numbers, arrays as lists, paths and other objects as text."""
    from ..run.atomic import dumps

    def plain(x):
        if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
            return x.item()
        return x.tolist() if hasattr(x, "tolist") else str(x)

    return dumps(obj, indent=2, default=plain)


def quiet_args(q) -> None:
    q.add_argument("--no-progress", dest="progress", action="store_false", help="no progress display")
    q.add_argument("--quiet", "-q", action="store_true", help="no progress and no results: print only the run directory")


def callbacks(args):
    """None: the default progress display; []: none (--no-progress, --quiet)."""
    return [] if args.quiet or not args.progress else None


def quiet_flags(args) -> list[str]:
    return [*(["--quiet"] if args.quiet else []), *([] if args.progress else ["--no-progress"])]


def print_results(run, quiet: bool = False) -> None:
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
    from ..measure.bill import format_bill

    print(format_bill(run.bill))
    print(f"run written to {run.dir}")
