"""The sensitivity subcommand: one layer at a time, per-layer targets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prunekit.cli.common import AddCommand, build_model, import_attribute


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from prunekit.config import load_config
    from prunekit.layer_sensitivity import sensitivity

    config = load_config(Path(args.config))
    if (args.eval is None) == (args.text is None):
        raise ValueError("give the metric as --eval MODULE:FUNCTION (a function of the model returning one number) or as --text FILE (perplexity of a causal LM)")
    if args.target is not None and not args.out:
        raise ValueError("--target writes a config with per-layer targets: give --out FILE.yaml too")
    if args.out and Path(args.out).exists() and not args.force:
        raise FileExistsError(f"--out {args.out} exists; pass --force to replace it")
    if args.text is not None:
        from prunekit.post_training.lm import load_causal_lm, load_text, perplexity, split_tokens

        if not Path(args.text).is_file():
            raise FileNotFoundError(f"--text {args.text}: no such file")
        model, tokenizer = load_causal_lm(args.model, args.gguf_file)
        _, eval_ids = split_tokens(tokenizer, load_text(args.text))
        higher_is_better = False
        print(f"metric: perplexity on {min(args.eval_tokens, eval_ids.numel()) // args.seqlen * args.seqlen:,} held-out tokens of {args.text}")

        def evaluate(m: Any) -> float:
            return perplexity(m, eval_ids, args.seqlen, args.eval_tokens)
    else:
        model = build_model(args.model)
        evaluate = import_attribute(args.eval, "--eval", "my_eval:accuracy")
        higher_is_better = not args.lower_is_better
    progress = None if args.quiet else (lambda line: print(f"  {line}", file=sys.stderr, flush=True))
    result = sensitivity(model, config, evaluate, ratios=args.ratios, higher_is_better=higher_is_better, progress=progress)
    print(result.table())
    if args.plot:
        print(f"wrote {result.plot(args.plot)}")
    if args.target is not None:
        written = result.write_config(args.out, args.target)
        allocation = result.allocate(args.target)
        print(f"wrote {written}: per-layer targets from {min(allocation.values()):.3f} to {max(allocation.values()):.3f}, overall {args.target}")
    return 0


def register(add: AddCommand) -> None:
    """Add this module's subcommands to the parser (``add(name, function, help)`` returns the subparser)."""
    p = add("sensitivity", cmd_sensitivity, "Prune one layer at a time at a few ratios, measure, and write per-layer targets.")
    p.add_argument("config", help="YAML whose groups select the layers to scan (their pattern and criterion are used)")
    p.add_argument("--model", required=True, help="MODULE:FACTORY or a Hugging Face model folder (with --text: a causal LM folder or .gguf)")
    p.add_argument("--eval", help="MODULE:FUNCTION: evaluate(model) -> float (higher is better unless --lower-is-better)")
    p.add_argument("--text", help="a text file: the metric is the perplexity of its second half (causal LMs)")
    p.add_argument("--gguf-file", help="a GGUF file inside the model folder (with --text)")
    p.add_argument("--seqlen", type=int, default=256, help="perplexity window (with --text)")
    p.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens for perplexity (with --text)")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75, 0.9], help="sparsity of the one pruned layer")
    p.add_argument("--lower-is-better", action="store_true", help="the --eval metric is a loss or perplexity")
    p.add_argument("--target", type=float, help="overall sparsity for the per-layer config written to --out")
    p.add_argument("--out", help="the YAML file to write (with --target)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--plot", metavar="FILE", help="draw the metric against the ratio per layer (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
