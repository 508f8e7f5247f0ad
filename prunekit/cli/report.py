"""Subcommands about checkpoints: report, compress."""

from __future__ import annotations

import argparse
from pathlib import Path

from prunekit.cli.common import AddCommand, table


def cmd_report(args: argparse.Namespace) -> int:
    from prunekit.checkpoint_report import analyse, load_weights

    tensors, pruning = load_weights(args.checkpoint)
    rows = analyse(tensors)
    if not rows:
        raise ValueError(f"{args.checkpoint}: no weight tensors with 2 or more dimensions")
    targets: dict[str, str] = {}
    if pruning is not None:
        for group_name, group in pruning["groups"].items():
            for layer in group.get("layers", []):
                targets[layer] = f"{group_name} ({group.get('ratio', 0):.3f})"
    lines = []
    for row in rows:
        line = [row.name, "x".join(map(str, row.shape)), f"{row.sparsity:.2%}", ", ".join(row.patterns) or "-"]
        if pruning is not None:
            line.append(targets.get(row.name, "-"))
        lines.append(line)
    headers = ["layer", "shape", "sparsity", "zeros satisfy"] + (["pruner (ratio in force)"] if pruning is not None else [])
    print(table(headers, lines))
    total = sum(r.numel for r in rows)
    zeros = sum(round(r.sparsity * r.numel) for r in rows)
    print()
    if pruning is not None:
        pruned = [r for r in rows if r.name in targets]
        if pruned:
            p_total = sum(r.numel for r in pruned)
            p_zeros = sum(round(r.sparsity * r.numel) for r in pruned)
            print(f"pruned layers: {len(pruned)}, {p_total:,} weights, {p_zeros / p_total:.2%} zero")
    print(f"all weight matrices (embeddings and heads included): {len(rows)}, {total:,} weights, {zeros / total:.2%} zero")
    if pruning is not None:
        print(f"prunekit pruning state: global_step {pruning['global_step']}, {len(pruning.get('history', []))} event(s)")
    if args.plot:
        from prunekit.plotting import plot_layer_sparsity

        written = plot_layer_sparsity(rows, args.plot, set(targets) if pruning is not None else None, title=Path(args.checkpoint).name)
        print(f"wrote {written}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from prunekit.checkpoint_report import load_weights
    from prunekit.sparse_checkpoint import SPARSE_FILE, save_sparse

    tensors, _ = load_weights(args.checkpoint)
    out = Path(args.out) if args.out else (Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent) / SPARSE_FILE
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists; pass --force to replace it or --out for another name")
    stats = save_sparse(tensors, out)
    print(stats)
    print(f"load it with prunekit.load_sparse({str(out)!r}, into=model)")
    return 0


def register(add: AddCommand) -> None:
    """Add this module's subcommands to the parser (``add(name, function, help)`` returns the subparser)."""
    p = add("report", cmd_report, "Per-layer shape, element-wise sparsity and the patterns the zeros satisfy.")
    p.add_argument("checkpoint", help="a state_dict, a training checkpoint (.pt/.ckpt), a model.safetensors, or a Hugging Face "
                   "model / Trainer checkpoint-N folder (its prunekit_pruning.pt fills the pruner column)")
    p.add_argument("--plot", metavar="FILE", help="also draw the per-layer sparsity (PNG/SVG/PDF; needs matplotlib)")
    p = add("compress", cmd_compress, "Store a pruned checkpoint's zeros as a bitmask (compact safetensors); print the bytes saved.")
    p.add_argument("checkpoint", help="any checkpoint prunekit report reads (file or Hugging Face / checkpoint-N folder)")
    p.add_argument("--out", help="the .safetensors file to write (default: model.sparse.safetensors beside the checkpoint)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
