"""The oneshot subcommand: prune a Hugging Face causal LM once from calibration text."""

from __future__ import annotations

import argparse
from pathlib import Path

from prunekit.cli.common import AddCommand


def cmd_oneshot(args: argparse.Namespace) -> int:
    import torch

    from prunekit.config import load_config
    from prunekit.config.pattern_syntax import parse_pattern
    from prunekit.post_training import oneshot
    from prunekit.post_training.lm import calibration_windows, load_causal_lm, load_text, perplexity, split_tokens

    if args.config:
        config = load_config(Path(args.config))
    else:
        sparsity = args.sparsity
        if sparsity is None:  # N:M prunes N of M; unstructured defaults to half (a bad pattern is reported by the config)
            try:
                spec = parse_pattern(args.pattern)
            except ValueError:
                spec = None
            sparsity = spec.n / spec.m if spec is not None and spec.kind == "nm" else 0.5
        group = {"type": args.method, "pattern": args.pattern, "target_sparsity": sparsity, "op_types": ["Linear", "Conv1D"]}
        if args.owl:
            group["allocation"] = "owl"
        config = load_config({"pruners": [group]})
    if not Path(args.text).is_file():
        raise FileNotFoundError(f"--text {args.text}: no such file")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads}: give at least 1")
        torch.set_num_threads(args.threads)
    if args.out and Path(args.out).exists() and (not Path(args.out).is_dir() or any(Path(args.out).iterdir())):
        raise FileExistsError(f"--out {args.out} exists and is not an empty folder; name a new folder (nothing is overwritten)")
    model, tokenizer = load_causal_lm(args.model, args.gguf_file)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and args.seqlen > limit:
        raise ValueError(f"--seqlen {args.seqlen} is longer than the model's max_position_embeddings ({limit})")
    model.to(args.device)
    calib_ids, eval_ids = split_tokens(tokenizer, load_text(args.text))
    calibration = calibration_windows(calib_ids, args.samples, args.seqlen, args.seed)
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()):,} parameters; {calib_ids.numel():,} calibration / "
          f"{eval_ids.numel():,} evaluation tokens; {args.samples} windows of {args.seqlen} (seed {args.seed})")
    before = perplexity(model, eval_ids, args.seqlen, args.eval_tokens) if args.eval_tokens else None
    result = oneshot(model, config, calibration, device=args.device, offload=args.offload, progress=not args.no_progress)
    print(result.table())
    if before is not None:
        after = perplexity(model, eval_ids, args.seqlen, args.eval_tokens)
        used = min(args.eval_tokens, eval_ids.numel()) // args.seqlen * args.seqlen
        print(f"perplexity on {used:,} held-out tokens ({args.seqlen}-token windows): {before:.2f} dense -> {after:.2f} pruned")
    if args.out:
        model.save_pretrained(args.out)
        tokenizer.save_pretrained(args.out)
        print(f"saved to {args.out} (the zeros are kept; fine-tune with a pattern_lock group to keep them)")
    return 0


def register(add: AddCommand) -> None:
    """Add this module's subcommands to the parser (``add(name, function, help)`` returns the subparser)."""
    p = add("oneshot", cmd_oneshot, "Prune a Hugging Face causal LM once from calibration text (SparseGPT, Wanda, magnitude).")
    p.add_argument("model", help="a Hugging Face model folder (or a .gguf file)")
    p.add_argument("--gguf-file", help="a GGUF file inside the model folder")
    p.add_argument("--text", required=True, help="text for calibration (first half) and perplexity (second half); .bz2/.gz ok")
    p.add_argument("--config", help="a YAML config with one-shot groups (instead of --method/--sparsity/--pattern)")
    p.add_argument("--method", choices=["sparse_gpt", "wanda", "magnitude"], default="sparse_gpt")
    p.add_argument("--sparsity", type=float, help="target sparsity (default: 0.5; N/M for an N:M pattern)")
    p.add_argument("--pattern", default="1x1", help="1x1 or N:M (2:4, 4:8)")
    p.add_argument("--owl", action="store_true", help="OWL layer-wise sparsity (unstructured only)")
    p.add_argument("--samples", type=int, default=128, help="calibration windows")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-tokens", type=int, default=8192, help="held-out tokens for perplexity (0: skip)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's); set it to the free cores of a busy machine")
    p.add_argument("--offload", action="store_true", help="keep activations on the CPU between blocks")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", help="save the pruned model (save_pretrained) to this folder")
