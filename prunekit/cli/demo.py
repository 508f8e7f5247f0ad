"""The demo subcommand (the MLP demo and the LLM demo)."""

from __future__ import annotations

import argparse

from prunekit.cli.common import AddCommand


def cmd_demo(args: argparse.Namespace) -> int:
    from prunekit.demo import DEFAULT_CONFIGS, run_from_args
    from prunekit.demo_llm import llm_options_given
    from prunekit.demo_llm import run_from_args as run_llm

    if args.which == "llm":
        if args.configs != DEFAULT_CONFIGS:
            raise ValueError("--configs is for the MLP demo (prunekit demo); prunekit demo llm takes --model/--text")
        return run_llm(args)
    given = llm_options_given(args)
    if given:
        raise ValueError(f"{', '.join(given)} {'is an option' if len(given) == 1 else 'are options'} of prunekit demo llm, not of the MLP demo")

    return run_from_args(args)


def register(add: AddCommand) -> None:
    """Add this module's subcommands to the parser (``add(name, function, help)`` returns the subparser)."""
    p = add("demo", cmd_demo, "Train, prune and fine-tune a small network on real data (or prune a real LLM once); print one table.")
    from prunekit.demo import add_arguments
    from prunekit.demo_llm import add_arguments as add_llm_arguments

    p.add_argument("which", nargs="?", choices=["mlp", "llm"], default="mlp",
                   help="mlp: training-time pruning of an MLP on digits (default); llm: magnitude / Wanda / SparseGPT on SmolLM2-135M")
    add_arguments(p)
    add_llm_arguments(p)
