"""The slim subcommand: remove pruned heads and channels from a Hugging Face model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from prunekit.cli.common import AddCommand, hf_model


def cmd_slim(args: argparse.Namespace) -> int:
    import shutil

    from prunekit.config import load_config
    from prunekit.structure.slim import plan_slim

    source = Path(args.checkpoint)
    if not source.is_dir() or not (source / "config.json").is_file():
        raise ValueError(
            f"{source}: prunekit slim reads a Hugging Face model folder (or a Trainer checkpoint-N folder); for other models "
            f"call prunekit.slim(model) in Python"
        )
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not an empty folder; name a new folder (nothing is overwritten)")
    config = load_config(Path(args.config)) if args.config else None
    model = hf_model(source).eval()
    plan = plan_slim(model, config)
    print(plan.table())
    if all(row.kept == row.units for row in plan.rows):
        print("nothing to remove: no head or channel of this model has all of its output-side weights at zero")
    vocab = getattr(model.config, "vocab_size", None)
    example = None
    if isinstance(vocab, int) and vocab > 0:  # token ids: the slimmed model's outputs are checked against the pruned model's
        import torch

        example = {"input_ids": torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))}
    report = plan.apply(example_inputs=example)
    if example is not None:
        print(f"checked: the slimmed model's outputs equal the pruned model's on random token ids; "
              f"multiply-adds {report.macs_before:,} -> {report.macs_after:,}")
    model.save_pretrained(out)
    for item in source.iterdir():  # the tokenizer and other files the model folder carries
        if item.is_file() and item.name.startswith(("tokenizer", "vocab", "merges", "special_tokens", "spiece", "preprocessor")):
            shutil.copy2(item, out / item.name)
    print(f"wrote {out}: load it with prunekit.load_slimmed(Model.from_config(AutoConfig.from_pretrained({str(out)!r})), {str(out)!r})")
    return 0


def register(add: AddCommand) -> None:
    """Add this module's subcommands to the parser (``add(name, function, help)`` returns the subparser)."""
    p = add("slim", cmd_slim, "Remove pruned attention heads and FFN/conv channels from a Hugging Face model folder; a smaller model.")
    p.add_argument("checkpoint", help="a Hugging Face model folder or Trainer checkpoint-N folder")
    p.add_argument("--out", required=True, help="the folder to write the slimmed model to (new or empty)")
    p.add_argument("--config", help="the pruning YAML, for structures its units: entries declare")
