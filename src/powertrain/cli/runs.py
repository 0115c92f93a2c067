"""`powertrain bill | regions | compare | report | runs | plan | peak`: what runs cost, side by side, and
what a run would cost."""
from __future__ import annotations

from .common import dump


def _run_overrides(args) -> list[str]:
    out = []
    for key in ("region", "pue", "price_per_kwh"):
        if getattr(args, key, None) is not None:
            out.append(f"run.{key}={getattr(args, key)}")
    return out


def cmd_bill(args) -> int:
    from ..measure.bill import format_bill, recarbon
    from ..run.rundir import RunDir, open_run

    path, recipe = open_run(args.run_dir, _run_overrides(args))
    bill = RunDir(path).read("bill")
    if _run_overrides(args):
        bill = recarbon(bill, recipe.run)
    print(dump(bill) if args.json else format_bill(bill))
    return 0


def cmd_regions(args) -> int:
    from ..measure.carbon import all_regions

    regions = sorted(all_regions(), key=lambda r: (r.g_per_kwh, r.region))
    if args.json:
        print(dump([r.__dict__ for r in regions]))
        return 0
    width = max(len(r.region) for r in regions)
    for r in regions:
        print(f"{r.region:<{width}} {r.g_per_kwh:>7.4g} g CO2e/kWh  ({r.year or 'year not given'}; {r.source})")
    return 0


def cmd_compare(args) -> int:
    from ..report.compare import compare, table

    rows, png = compare(args.run_dirs, args.metric, args.split, png=args.png)
    if args.json:
        print(dump({"metric": args.metric, "split": args.split, "rows": rows, "png": png}))
        return 0
    print(table(rows, args.metric))
    if png:
        print(f"Pareto plot written to {png}")
    return 0


def cmd_report(args) -> int:
    from ..report.html import report

    path = report(args.run_dirs, out=args.out, metric=args.metric, split=args.split)
    print(path if args.quiet else f"report written to {path} (open it in a browser; it needs no network)")
    return 0


def cmd_runs(args) -> int:
    from ..run.listing import find_runs, format_runs

    rows = find_runs(args.dir)
    if args.json:
        print(dump(rows))
    else:
        print(format_runs(rows, args.dir))
    return 0


def cmd_plan(args) -> int:
    from ..study.plan import format_plan, plan

    p = plan(params=args.params, tokens=args.tokens, device=args.device, count=args.count, dtype=args.dtype,
             mfu=args.mfu, from_run=args.from_run, region=args.region, pue=args.pue,
             price_per_kwh=args.price_per_kwh, flops=args.flops, from_fit=args.from_fit)
    print(dump(p) if args.json else format_plan(p))
    return 0


def cmd_peak(args) -> int:
    from ..measure import cpu_peak

    p = cpu_peak(args.dtype, refresh=args.refresh)
    print(f"{p.device}: {p.flops_per_s / 1e9:.1f} GFLOP/s {p.dtype} ({p.source})")
    return 0


def add_commands(sub) -> None:
    def carbon_args(q):
        q.add_argument("--region", help="grid region for CO2e (see `powertrain regions`) or g CO2e/kWh")
        q.add_argument("--pue", type=float, help="facility power usage effectiveness (>= 1)")
        q.add_argument("--price-per-kwh", dest="price_per_kwh", type=float, help="electricity price per kWh")

    b = sub.add_parser("bill", help="print a run's bill (FLOPs, MFU, time, memory, energy, CO2e)")
    b.add_argument("run_dir")
    b.add_argument("--json", action="store_true", help="print bill.json")
    carbon_args(b)
    b.set_defaults(func=cmd_bill)
    rg = sub.add_parser("regions", help="list the countries and cloud regions (--region) and their grid's carbon intensity")
    rg.add_argument("--json", action="store_true", help="print the regions as one JSON document")
    rg.set_defaults(func=cmd_regions)

    c = sub.add_parser("compare", help="compare runs: table and Pareto plot of metric vs energy and FLOPs")
    c.add_argument("run_dirs", nargs="+")
    c.add_argument("--metric", default="accuracy")
    c.add_argument("--split", default="test", choices=["val", "test"])
    c.add_argument("--png", default="compare.png", help="where to write the plot (default compare.png)")
    c.add_argument("--json", action="store_true", help="print the rows (and the plot's path) as one JSON document")
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
    pl.add_argument("--json", action="store_true", help="print the plan as one JSON document")
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

    pk = sub.add_parser("peak", help="measure (and cache) this CPU's peak matmul FLOP/s")
    pk.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16", "fp64"])
    pk.add_argument("--refresh", action="store_true", help="measure again instead of reading the cache")
    pk.set_defaults(func=cmd_peak)
