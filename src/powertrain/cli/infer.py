"""`powertrain predict | generate`: a trained run used."""
from __future__ import annotations

import sys

from .common import CHECKPOINT_HELP, dump, number


def cmd_predict(args) -> int:
    from ..infer.predict import format_predictions, inference_line, predict, write_predictions

    result = predict(args.run_dir, args.input,
                     batch_size=number(args.batch_size, "--batch-size", int, "a whole number >= 1"),
                     max_new_tokens=number(args.max_new_tokens, "--max-new-tokens", int, "a whole number >= 0"),
                     checkpoint=args.checkpoint)
    if args.json:  # one JSON document on stdout, nothing else (the inference line goes to stderr)
        if args.out:
            write_predictions(result, args.out)
        print(dump({k: v for k, v in result.items() if k != "outputs"}))
        print(inference_line(result), file=sys.stderr)
        return 0
    if args.out:
        print(f"predictions written to {write_predictions(result, args.out)}")
    else:
        print(format_predictions(result))
    print(inference_line(result), file=sys.stderr if not args.out else sys.stdout)
    return 0


def cmd_generate(args) -> int:
    from ..infer.generate import generate

    top_k = number(args.top_k, "--top-k", int, "a whole number >= 1, or 0 for no limit")
    text = generate(args.run_dir, prompt=args.prompt,
                    max_new_tokens=number(args.max_new_tokens, "--max-new-tokens", int, "a whole number >= 0"),
                    temperature=number(args.temperature, "--temperature", float, "a number >= 0 (0: greedy)"),
                    top_k=top_k or None, seed=number(args.seed, "--seed", int, "a whole number"),
                    checkpoint=args.checkpoint)
    print(text)
    return 0


def add_commands(sub) -> None:
    pr = sub.add_parser("predict", help="run a trained model on a file (CSV, .npy, image, or a prompt) and bill the inference")
    pr.add_argument("run_dir")
    pr.add_argument("input", help="a .csv, .npy, image file or folder of images; for a language model, the prompt")
    pr.add_argument("--out", help="write the predictions to a .csv, .json (with the bill) or .npy (raw outputs) file")
    pr.add_argument("--batch-size", dest="batch_size", default="256", help="samples per forward pass (default 256)")
    pr.add_argument("--max-new-tokens", dest="max_new_tokens", default="100",
                    help="language models: tokens of greedy continuation (default 100)")
    pr.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    pr.add_argument("--json", action="store_true", help="print the predictions and the inference's bill as one JSON "
                                                       "document on stdout (nothing else there)")
    pr.set_defaults(func=cmd_predict)

    g = sub.add_parser("generate", help="continue a prompt with a trained language model (e.g. gpt-stdlib)")
    g.add_argument("run_dir")
    g.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    g.add_argument("--max-new-tokens", dest="max_new_tokens", default="500", help="tokens to add (default 500)")
    g.add_argument("--temperature", default="0.8", help="divides the logits; 0 takes the most likely token (default 0.8)")
    g.add_argument("--top-k", dest="top_k", default="40", help="sample among the k most likely tokens; 0: all (default 40)")
    g.add_argument("--seed", default="0", help="seed of the draws: the same seed gives the same text (default 0)")
    g.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    g.set_defaults(func=cmd_generate)
