"""The `powertrain` command: a thin layer over the library, one module per command group (train.py,
runs.py, infer.py, trust.py, shrink.py, study.py); this one assembles the parser and turns errors into
one line and an exit status."""
from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from ..errors import PowertrainError
from ..settings import recorded_threads
from . import infer, runs, shrink, study, train, trust

GROUPS = (train, infer, runs, trust, shrink, study)  # the order of `powertrain --help`


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


def parser() -> argparse.ArgumentParser:
    from ..settings import VERSION

    p = argparse.ArgumentParser(prog="powertrain", description="Train neural networks and get a measured bill.")
    p.add_argument("--version", action="version", version=f"powertrain {VERSION}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Intermixed)
    for group in GROUPS:
        group.add_commands(sub)
    for name, command in sub.choices.items():  # every command's --help ends with an example
        example = EXAMPLES.get(name)
        if example:
            command.epilog = "example:\n  " + example
            command.formatter_class = argparse.RawDescriptionHelpFormatter
    return p


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


TRAINING = ("train", "resume", "distill", "sweep", "scale")  # commands that choose CPU threads before torch loads


def threads_before_torch(argv: list[str]) -> None:
    """A training command chooses its CPU threads before torch loads: OpenMP reads OMP_NUM_THREADS and
    OMP_WAIT_POLICY once, when torch starts its pool (settings.choose_threads)."""
    from ..settings import choose_threads, export_threads

    if "torch" in sys.modules or not argv or argv[0] not in TRAINING or {"-h", "--help"} & set(argv):
        return
    if any(a == "--nproc" or a.startswith("--nproc=") for a in argv):  # torchrun gives each rank its threads
        return
    asked = [a.split("=", 1)[1] for a in argv if a.startswith("train.threads=")]
    requested = int(asked[-1]) if asked and asked[-1].isdigit() and int(asked[-1]) >= 1 else "auto"  # else refused later
    keep = None
    if argv[0] == "resume":  # the run's own count: another gives other bits than an uninterrupted run
        keep = next((n for n in map(run_threads, argv[1:]) if n), None)
    export_threads(choose_threads(requested, keep=keep))  # the Trainer records it; its progress prints it


def run_threads(arg: str) -> int | None:
    """The CPU threads the run directory `arg` records, or None (not a run directory)."""
    import json

    try:
        env = json.loads((Path(arg) / "env.json").read_text())
    except (OSError, ValueError):
        return None
    return recorded_threads(env) if isinstance(env, dict) else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    threads_before_torch(argv)
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
