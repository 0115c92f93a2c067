"""`powertrain explain | audit`: can the run be trusted."""
from __future__ import annotations

from .common import CHECKPOINT_HELP, dump, number


def cmd_explain(args) -> int:
    from ..trust.explain import METHODS, explain, format_explain

    methods = [m.strip() for arg in (args.method or [",".join(METHODS)]) for m in arg.split(",") if m.strip()]
    r = explain(args.run_dir, methods, split=args.split, n=number(args.n, "--n", int, "a whole number >= 2"),
                target=args.target, checkpoint=args.checkpoint, seed=number(args.seed, "--seed", int, "a whole number"),
                checks=args.checks)
    return _show(args, r, format_explain, "explain.json")


def cmd_audit(args) -> int:
    from ..trust.audit import audit, format_audit

    r = audit(args.run_dir, n=number(args.n, "--n", int, "a whole number >= 10"), nonmembers=args.nonmembers,
              seed=number(args.seed, "--seed", int, "a whole number"), checkpoint=args.checkpoint)
    return _show(args, r, format_audit, "audit.json")


def _show(args, report: dict, format_report, file: str) -> int:
    """--json: the report as one JSON document; else its text and the files written."""
    if args.json:
        print(dump(report))
        return 0
    print(format_report(report))
    print(f"written: {args.run_dir}/{file}, {args.run_dir}/{report['picture']}")
    return 0


def add_commands(sub) -> None:
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
    ex.add_argument("--json", action="store_true", help="print explain.json's content as one JSON document")
    ex.set_defaults(func=cmd_explain)

    au = sub.add_parser("audit", help="membership-inference audit of a run: AUC, TPR at 1%% FPR, the bound of its privacy")
    au.add_argument("run_dir")
    au.add_argument("--n", default="5000", help="members and non-members each, at most (default 5000)")
    au.add_argument("--nonmembers", choices=["val", "test"], help="held-out split (default test, else val)")
    au.add_argument("--seed", default="0", help="which samples, and the bootstrap's draws (default 0)")
    au.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    au.add_argument("--json", action="store_true", help="print audit.json's content as one JSON document")
    au.set_defaults(func=cmd_audit)
