"""`powertrain prune | quantize | export`: the commands over powertrain.shrink.

`add_commands(subparsers)` adds them to the `powertrain` parser (cli/__init__.py calls it). Numbers are taken
as text and checked by the library, so that a bad value is a one-line error naming the flag.
"""
from __future__ import annotations

from ..errors import RecipeError
from ..run.atomic import dumps
from .common import CHECKPOINT_HELP, number


def _print_child(child, format_report) -> None:
    from ..measure.bill import format_bill
    from ..run.rundir import RunDir
    from ..shrink.derived import read_derived

    print(format_report(read_derived(child)["report"]))
    print(format_bill(RunDir(child).read("bill")))
    print(f"derived run written to {child}")


def cmd_prune(args) -> int:
    epochs = number(args.epochs, "--epochs", int, "a whole number >= 0")
    lr = number(args.lr, "--lr", float, "a learning rate > 0")
    steps = number(args.steps, "--steps", int, "a whole number >= 1")
    progress = None if args.progress else []
    structured = [flag for flag in ("channels", "heads") if getattr(args, flag) is not None]
    if structured:
        if len(structured) > 1 or args.sparsity is not None or args.rounds is not None:
            raise RecipeError("--channels, --heads (structured) and --sparsity/--rounds (unstructured) are separate "
                              "methods; give one")
        from ..shrink import structured as st

        what = structured[0]
        fn = st.prune_channels if what == "channels" else st.prune_heads
        child = fn(args.run_dir, number(getattr(args, what), f"--{what}", float, "a fraction such as 0.5"),
                   epochs=2 if epochs is None else epochs, lr=lr, steps=steps, out=args.out, callbacks=progress,
                   checkpoint=args.checkpoint)
        _print_child(child, st.format_report)
        return 0
    from ..shrink.prune import format_report, prune

    child = prune(args.run_dir, sparsity=number(args.sparsity or "0.8", "--sparsity", float, "a fraction such as 0.8"),
                  rounds=number(args.rounds or "1", "--rounds", int, "a whole number >= 1"),
                  epochs=1 if epochs is None else epochs, lr=lr, steps=steps, out=args.out, callbacks=progress,
                  checkpoint=args.checkpoint)
    _print_child(child, format_report)
    print("unstructured: the zeros are stored densely, so the checkpoint is as large and a forward pass as costly "
          "as the parent's until a sparse kernel runs them; --channels removes whole channels instead")
    return 0


def cmd_quantize(args) -> int:
    from ..shrink.quantize import format_report, quantize

    child = quantize(args.run_dir, mode=args.mode, out=args.out,
                     repeats=number(args.repeats, "--repeats", int, "a whole number >= 1"),
                     threads=number(args.threads, "--threads", int, "a whole number >= 1"), checkpoint=args.checkpoint)
    _print_child(child, format_report)
    return 0


def cmd_export(args) -> int:
    from ..shrink.export import export

    result = export(args.run_dir, format=args.format, out=args.out,
                    samples=number(args.samples, "--samples", int, "a whole number >= 2"), checkpoint=args.checkpoint)
    if args.json:
        print(dumps(result, indent=2))
    else:
        print(f"{result['format']} written to {result['path']} ({result['bytes']:,} bytes)")
        if "max_abs_diff" in result:
            print(f"parity: max |torch - onnxruntime| = {result['max_abs_diff']:.2e} over {result['checked']} "
                  f"(bar {result['bar']:g}): {'ok' if result['ok'] else 'ABOVE THE BAR'}")
    return 0 if result.get("ok", True) else 1


def add_commands(sub) -> None:
    """Add prune, quantize and export to an argparse subparsers object."""
    p = sub.add_parser("prune", help="prune a run into a derived run: whole channels (--channels, smaller and faster) "
                                     "or heads (--heads), or single weights (--sparsity, zeros stored densely)")
    p.add_argument("run_dir")
    p.add_argument("--channels", help="structured: remove this fraction of every hidden layer's channels with "
                                      "Torch-Pruning (cnn, mlp), e.g. 0.5; the model gets smaller and faster")
    p.add_argument("--heads", help="structured: remove this fraction of every attention layer's heads (transformer, "
                                   "gpt), e.g. 0.5")
    p.add_argument("--sparsity", help="unstructured: fraction of the Linear/Conv weights set to zero (default 0.8); "
                                      "saves nothing until a sparse kernel is used")
    p.add_argument("--rounds", help="unstructured: prune in this many rounds, fine-tuning after each (default 1)")
    p.add_argument("--epochs", help="fine-tuning epochs (per round); 0: no fine-tuning (default 2 with --channels, "
                                    "else 1)")
    p.add_argument("--steps", help="fine-tuning steps (per round), instead of --epochs")
    p.add_argument("--lr", help="fine-tuning learning rate (default: a tenth of the run's), cosine-decayed")
    p.add_argument("--out", help="derived run directory (default RUN_DIR-pruneNN, -channelsNN or -headsNN beside the run)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress display")
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    p.set_defaults(func=cmd_prune)

    q = sub.add_parser("quantize", help="int8 post-training quantization of a run into a derived run")
    q.add_argument("run_dir")
    q.add_argument("--mode", default="dynamic", choices=["dynamic", "static", "ao-weight", "ao-dynamic"],
                   help="ao-weight / ao-dynamic: torchao int8 weights (and activations) of the Linear layers; "
                        "dynamic: Linear/LSTM/GRU weights int8, static: a CNN or MLP all int8, both through the "
                        "deprecated eager torch.ao.quantization (default dynamic)")
    q.add_argument("--repeats", default="200", help="timed forward passes per model and batch size (1 and 64) for the "
                                                    "latency (default 200)")
    q.add_argument("--threads", default="1", help="CPU threads while timing (default 1)")
    q.add_argument("--out", help="derived run directory (default RUN_DIR-int8-MODE beside the run)")
    q.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("export", help="export a run's model as ONNX (checked with onnxruntime) or safetensors")
    e.add_argument("run_dir")
    e.add_argument("--format", default="onnx", choices=["onnx", "safetensors"])
    e.add_argument("--out", help="file to write (default RUN_DIR/export/model.FORMAT)")
    e.add_argument("--samples", default="64", help="data samples the ONNX parity check runs (default 64)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    e.set_defaults(func=cmd_export)
